"""The API's token authentication (kept apart from views: REST framework imports it while it loads)."""

from __future__ import annotations

from typing import Any

from knox.auth import TokenAuthentication as KnoxTokenAuthentication
from rest_framework.exceptions import AuthenticationFailed


class TokenAuthentication(KnoxTokenAuthentication):
    """`Authorization: Token <token>`: hashed, expiring tokens (django-rest-knox); a header that is
    not UTF-8 text is a 401, not a 500."""

    def authenticate_credentials(self, token: bytes) -> Any:
        try:
            token.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid token.") from None
        return super().authenticate_credentials(token)


def _register_schema() -> None:
    """The OpenAPI security scheme of TokenAuthentication (drf-spectacular reads it when it builds
    the schema; imported by the app's ready())."""
    from drf_spectacular.extensions import OpenApiAuthenticationExtension
    from drf_spectacular.plumbing import build_bearer_security_scheme_object

    class TokenScheme(OpenApiAuthenticationExtension):  # type: ignore[misc]
        target_class = "webapp.api.authentication.TokenAuthentication"
        name = "tokenAuth"

        def get_security_definition(self, auto_schema: Any) -> Any:
            return build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Token")
