// The run review page's keyboard: j/k (or n/p) next/previous artifact, a approve, r reject
// (type the comment, Ctrl+Enter sends it), Esc leaves the comment box. Nothing here decides
// anything on its own: every key presses one of the page's own buttons.
"use strict";
(function () {
  const cards = Array.from(document.querySelectorAll(".airlock-card"));
  if (!cards.length) return;
  let current = -1;

  function select(index) {
    if (index < 0 || index >= cards.length) return;
    if (current >= 0) cards[current].classList.remove("is-current");
    current = index;
    const card = cards[current];
    card.classList.add("is-current");
    card.focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest" });
    history.replaceState(null, "", "#" + card.id);
  }

  function start() {
    const focus = new URLSearchParams(location.search).get("focus");
    const byFocus = cards.findIndex((c) => c.dataset.artifact === focus);
    const byHash = cards.findIndex((c) => "#" + c.id === location.hash);
    const firstOpen = cards.findIndex((c) => c.classList.contains("is-decidable"));
    select([byFocus, byHash, firstOpen, 0].find((i) => i >= 0));
  }

  function reject(form, button) {
    const comment = form.querySelector("textarea[name=comment]");
    if (!comment.value.trim()) {
      comment.classList.add("is-missing");
      comment.placeholder = "A reject needs a comment: say why, then Ctrl+Enter";
      comment.focus();
      return false;
    }
    form.requestSubmit(button);
    return true;
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.airlock-reject");
    if (!button) return;
    event.preventDefault();
    reject(button.form, button);
  });

  cards.forEach((card, index) => card.addEventListener("click", () => select(index)));

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target.matches("textarea, input, select")) {
      if (event.key === "Escape") target.blur();
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form) {
        event.preventDefault();
        const button = target.form.querySelector("button.airlock-reject");
        if (button) reject(target.form, button);
      }
      return;
    }
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const card = cards[current];
    switch (event.key) {
      case "j": case "n": select(current + 1); break;
      case "k": case "p": select(current - 1); break;
      case "a": {
        const approve = card && card.querySelector("button.airlock-approve");
        if (approve) approve.form.requestSubmit(approve);
        break;
      }
      case "r": {
        const comment = card && card.querySelector(".airlock-decide textarea");
        if (comment) { event.preventDefault(); comment.focus(); }
        break;
      }
      default: return;
    }
  });

  start();
})();
