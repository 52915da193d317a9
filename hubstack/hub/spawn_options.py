"""What a start request may ask for (`user_options`, from the spawn form or the REST API),
declared once and checked before anything starts.

Four options exist: `profile`, the name of a profile in the platform config (default: the
first the analyst may use), and `version`: `stable` (the default, the promoted and tested
images), `preview` (the last build CI tested, for those `hub.preview` names) or a release
X.Y.Z (see hubstack.hub.versions); `plain: true`, which starts without the analyst's
own packages (hubstack.images.user); and `packages`, the spawn form's text area that sets
those packages, where `user_images.form` is on. Anything else
is refused with the names of the unknown keys; a wrong type, an unknown profile or version
is refused with what is accepted. The hub answers these refusals with 400.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from hubstack.ci.tags import Version
from hubstack.config import PlatformConfig
from hubstack.images import user as user_images


class SpawnOptionsError(ValueError):
    """A start request's options are not what the platform accepts; the message says why."""


class SpawnOptions(BaseModel):
    """The options every profile accepts. Strict: "1" is not a number, [] not a string."""

    model_config = ConfigDict(extra="forbid", strict=True)

    profile: str | None = None
    """Name of a profile in the platform config; None: the first profile."""
    version: str | None = None
    """Which images: stable (hub.notebook_image_tag), preview (images.tag), or a release
    X.Y.Z; None: the release this analyst chose last, else stable."""
    plain: bool | None = None
    """True: start on the profile's own image, without the analyst's packages (their
    per-user image, hubstack.images.user); the way out when those fail to build."""
    packages: str | None = None
    """The analyst's own packages, one per line (apt:NAME for a Debian package), replacing
    what they had; only where user_images.form is on. None: keep them as they are."""

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: str | None) -> str | None:
        if value is None or value in ("stable", "preview") or Version.from_tag(value):
            return value
        raise ValueError(f"{value[:40]!r} is not stable, preview or a release such as 1.4.0")


def parse_spawn_options(cfg: PlatformConfig, options: object) -> SpawnOptions:
    """OPTIONS checked against SpawnOptions and the config's profiles, or SpawnOptionsError."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise SpawnOptionsError(
            f"server options must be a JSON object, not {type(options).__name__}"
        )
    unknown = sorted(str(k) for k in options if k not in SpawnOptions.model_fields)
    if unknown:
        raise SpawnOptionsError(
            f"unknown server option(s): {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(SpawnOptions.model_fields)}"
        )
    try:
        parsed = SpawnOptions.model_validate(options)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg'].lower()}" for err in e.errors()
        )
        raise SpawnOptionsError(f"invalid server options: {problems}") from None
    if parsed.packages is not None:
        if not cfg.user_images.enabled or not cfg.user_images.form:
            raise SpawnOptionsError(
                "packages cannot be set at start on this platform (user_images.form is off): "
                "ask an admin to set them with `hubstack users env`"
            )
        try:
            user_images.parse_form_text(cfg, parsed.packages)
        except user_images.EnvSpecError as e:
            refused = f"your packages are refused, nothing was changed: {e}"
            raise SpawnOptionsError(refused) from None
    if parsed.profile is not None:
        names = [p.name for p in cfg.profiles]
        if parsed.profile not in names:
            raise SpawnOptionsError(
                f"unknown profile {parsed.profile[:64]!r}; profiles: {', '.join(names)}"
            )
    return parsed
