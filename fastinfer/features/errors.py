"""The typed error of feature definitions (a ``FeatureBuildError``, so a ``ValueError`` too)."""

from __future__ import annotations

from ..errors import FeatureBuildError


class FeatureDefinitionError(FeatureBuildError):
    """A feature name or definition cannot be compiled.

    ``FeatureDefinitionError(reason, *, feature=None, understood=None, hint=None)``:
    ``feature`` is the name (or definition) at fault, ``understood`` what the vocabulary or the
    grammar made of it, ``hint`` how to define it instead. ``str()`` joins them in one line.
    """

    def __init__(
        self, reason: str, *, feature: str | None = None, understood: str | None = None, hint: str | None = None
    ):
        super().__init__(reason, feature, understood, hint)
        self.reason = reason
        self.feature = feature
        self.understood = understood
        self.hint = hint

    def __reduce__(self):  # keyword-only fields: rebuild through a helper, not ``cls(*args)``
        return _rebuild, (self.reason, self.feature, self.understood, self.hint)

    def __str__(self) -> str:
        text = f"feature {self.feature!r}: {self.reason}" if self.feature else self.reason
        if self.understood:
            text += f" (understood: {self.understood})"
        if self.hint:
            text += f"; {self.hint}"
        return text


def _rebuild(reason, feature, understood, hint) -> FeatureDefinitionError:
    return FeatureDefinitionError(reason, feature=feature, understood=understood, hint=hint)
