"""The admin's reject forms: the comment every reject needs."""

from __future__ import annotations

from django import forms

from artifacts.models import REVIEW_COMMENT_MAX_CHARS


class RejectForm(forms.Form):
    comment = forms.CharField(
        max_length=REVIEW_COMMENT_MAX_CHARS,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text="Why the files stay in the airlock; the agent and its members see this.",
    )
