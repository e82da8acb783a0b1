"""API tokens (see `webapp.api.authentication`): stored hashed (django-rest-knox), with an expiry,
listed and revoked by their owner; logins through the API count towards django-axes' lockout and
are throttled."""

from __future__ import annotations

from typing import Any

from axes.exceptions import AxesBackendPermissionDenied
from django.contrib.auth import authenticate
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from knox.models import AuthToken
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, Throttled
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from webapp.accounts.services import token_create
from webapp.api.serializers import RefuseUnknownFields
from webapp.core.http import api_error, api_user


class Locked(Throttled):
    default_detail = "Too many failed logins for this account from this address: try again later."
    default_code = "locked_out"


class LoginSerializer(RefuseUnknownFields, serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)


class TokenSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="token_key", read_only=True, help_text="The token's first characters.")

    class Meta:
        model = AuthToken
        fields = ["id", "created", "expiry"]


class TokenCreateApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"

    @extend_schema(
        request=LoginSerializer,
        responses={
            200: inline_serializer(
                "NewToken",
                {
                    "token": serializers.CharField(),
                    "id": serializers.CharField(),
                    "expiry": serializers.DateTimeField(),
                },
            )
        },
        summary="Exchange a username and password for an API token (shown once; it expires)",
    )
    def post(self, request: Request) -> Response:
        body = LoginSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            user = authenticate(
                request._request, username=body.validated_data["username"], password=body.validated_data["password"]
            )
        except AxesBackendPermissionDenied:
            raise Locked() from None
        if getattr(request._request, "axes_locked_out", False):
            raise Locked()
        if user is None or not user.is_active:
            raise serializers.ValidationError({"non_field_errors": ["Unable to log in with provided credentials."]})
        instance, token = token_create(user=user)
        return Response({"token": token, "id": instance.token_key, "expiry": instance.expiry})


class TokenListApi(APIView):
    @extend_schema(responses=TokenSerializer(many=True), summary="Your API tokens that have not expired")
    def get(self, request: Request) -> Response:
        tokens = (
            AuthToken.objects.filter(user=api_user(request)).exclude(expiry__lt=timezone.now()).order_by("-created")
        )
        return Response(TokenSerializer(tokens, many=True).data)


class TokenRevokeApi(APIView):
    @extend_schema(request=None, responses={204: None}, summary="Revoke one of your tokens by its id")
    def delete(self, request: Request, token_id: str) -> Response:
        deleted, _ = AuthToken.objects.filter(user=api_user(request), token_key=token_id).delete()
        if not deleted:
            raise NotFound(f"You have no token {token_id!r}.")
        return Response(status=status.HTTP_204_NO_CONTENT)


def lockout_response(request: Any, original_response: Any = None, credentials: Any = None) -> Any:
    """django-axes' answer to a locked-out login: the API's error format under /api/, a page elsewhere."""
    from django.shortcuts import render

    message = str(Locked.default_detail)
    if request.path.startswith("/api/"):
        return api_error(429, Locked.default_code, message)
    return render(request, "registration/locked_out.html", {"message": message}, status=429)
