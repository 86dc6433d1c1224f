"""The admin's forms: the comment every reject needs, and the review policy."""

from __future__ import annotations

from typing import Any

from django import forms

from artifacts import policy
from artifacts.models import REVIEW_COMMENT_MAX_CHARS, ReviewPolicy
from config.exceptions import InvalidInput


class RejectForm(forms.Form):
    comment = forms.CharField(
        max_length=REVIEW_COMMENT_MAX_CHARS,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text="Why the files stay in the airlock; the agent and its members see this.",
    )


class ReviewPolicyForm(forms.ModelForm):  # type: ignore[type-arg]
    """The review policy in the admin, checked by the same rules as the API."""

    auto_approve = forms.JSONField(
        required=False,
        initial=list,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 80}),
        help_text='A JSON list of rules, e.g. [{"type": "image", "max_size": 1048576}, '
        '{"path_glob": "/home/user/artifacts/*.csv"}]. A rule approves an artifact at capture '
        "when every field it gives matches; never one with a secret or active content.",
    )

    class Meta:
        model = ReviewPolicy
        fields = [
            "workspace",
            "auto_approve",
            "required_approvals",
            "second_approval_only_with_signals",
            "expire_after_h",
        ]
        help_texts = {
            "required_approvals": "With two, two different reviewers must approve, and "
            "neither may have started the run.",
            "second_approval_only_with_signals": "Ask for the second approval only for "
            "artifacts with signals.",
            "expire_after_h": "Artifacts pending longer than this many hours expire (a final "
            "state, like a reject). Empty: never.",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            cleaned = policy.clean_policy(
                **{name: data.get(name) for name in policy.POLICY_FIELDS if name in data}
            )
        except InvalidInput as exc:
            raise forms.ValidationError(exc.detail) from exc
        data.update(cleaned)
        return data
