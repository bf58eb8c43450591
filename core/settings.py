"""One settings object for every process, read from ``TELEMETRY_*`` environment variables."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.redact import redact_url

ENV_PREFIX = "TELEMETRY_"
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
MIN_SECRET_BYTES = 32  # RFC 7518, 3.2: an HS256 key at least as long as the hash


# A field whose value is or leads to a secret: from the environment only, never a flag (a flag shows in ``ps``).
ENV_ONLY: dict[str, Any] = {"env_only": True}


def env_only(name: str) -> bool:
    """Whether the settings field ``name`` is read from the environment only (declared with ``ENV_ONLY``)."""
    extra = Settings.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and extra.get("env_only") is True


class StorageType(StrEnum):
    """Where JetStream keeps the stream; the values are the server's own words."""

    FILE = "file"
    MEMORY = "memory"


class Settings(BaseSettings):
    """Every knob of the platform. A field ``foo_s`` is ``TELEMETRY_FOO_S`` and the flag ``--foo-s``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # NATS and the JetStream stream
    nats_urls: Annotated[list[str], NoDecode] = Field(
        default=["nats://127.0.0.1:4222"],
        description="NATS server URLs, comma separated; credentials as nats://user:password@host:port or nats://token@host:port.",
    )
    # Whole seconds, as nats-py's connect_timeout takes them: a fraction is refused, not rounded.
    nats_connect_timeout_s: int = Field(
        default=2, ge=1, description="Timeout of one connection attempt, in whole seconds."
    )
    nats_tls_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CAs that NATS servers' certificates are checked against; else the system's.",
        json_schema_extra=ENV_ONLY,
    )
    nats_tls_cert_file: Path | None = Field(
        default=None,
        description="PEM file of the client certificate shown to NATS servers that verify clients (with its key).",
        json_schema_extra=ENV_ONLY,
    )
    nats_tls_key_file: Path | None = Field(
        default=None, description="PEM file of the client certificate's private key.", json_schema_extra=ENV_ONLY
    )
    nats_tls_first: bool = Field(
        default=False,
        description="TLS from the first byte, before the server's INFO (nats-server's tls handshake_first).",
    )
    nats_tls_server_name: str | None = Field(
        default=None,
        description=(
            "Name the NATS servers' certificates must carry, checked instead of each URL's host: for servers "
            "reached by IP address, such as those a cluster announces."
        ),
    )
    nats_nkey_seed_file: Path | None = Field(
        default=None,
        description="File holding the NKEY seed (SU...) of a NATS user authenticated by its public key.",
        json_schema_extra=ENV_ONLY,
    )
    nats_creds_file: Path | None = Field(
        default=None,
        description="NATS .creds file (user JWT and NKEY seed) for a NATS server in operator (JWT) mode.",
        json_schema_extra=ENV_ONLY,
    )
    stream_name: str = Field(default="TELEMETRY", pattern=TOKEN_PATTERN, description="JetStream stream name.")
    subject_prefix: str = Field(
        default="telemetry", pattern=TOKEN_PATTERN, description="First subject token; topics live under it."
    )
    stream_max_age_s: float = Field(default=86400.0, ge=0, description="Oldest reading kept; 0 keeps forever.")
    stream_max_bytes: int = Field(default=1 << 30, ge=-1, description="Stream size limit; -1 for none.")
    stream_max_msgs_per_subject: int = Field(default=-1, ge=-1, description="History kept per topic; -1 for all.")
    stream_replicas: int = Field(default=1, ge=1, le=5, description="Copies of the stream in a NATS cluster.")
    stream_duplicate_window_s: float = Field(
        default=120.0, gt=0, description="How long a reading id is remembered for de-duplication."
    )
    stream_storage: StorageType = Field(default=StorageType.FILE, description="file or memory.")

    # HTTP services
    ingest_host: str = Field(default="127.0.0.1", description="Address the ingest service listens on.")
    ingest_port: int = Field(default=8000, ge=0, le=65535, description="Port of the ingest service.")
    stream_host: str = Field(default="127.0.0.1", description="Address the stream service listens on.")
    stream_port: int = Field(default=8001, ge=0, le=65535, description="Port of the stream service.")
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description=(
            "Proxies (IPs or CIDRs, comma separated; * for any) whose X-Forwarded-For is trusted: "
            "per-client limits then see the real client behind them."
        ),
    )
    request_head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Longest wait for a complete request head (request line and headers), from the connection's start "
            "or the previous answer; then the connection is closed."
        ),
    )
    max_request_head_bytes: int = Field(
        default=64 << 10, ge=1024, description="Largest request head (request line and headers); larger is a 431."
    )
    discard_max_bytes: int = Field(
        default=8 << 20,
        ge=0,
        description=(
            "Most bytes of a refused request (the rest of its body, or of a head over the limit) read and dropped "
            "so that the client reads the answer; beyond, the connection is closed."
        ),
    )
    discard_timeout_s: float = Field(
        default=10.0, ge=0, description="Longest time spent reading and dropping the rest of a refused request."
    )

    # Ingest limits
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="Largest accepted request body.")
    max_batch: int = Field(default=1000, gt=0, description="Most readings in one request.")
    publish_timeout_s: float = Field(default=5.0, gt=0, description="Longest wait for JetStream's acknowledgements.")
    # Whole seconds, as uvicorn's timeout_graceful_shutdown takes them: a fraction is refused, not rounded.
    shutdown_grace_s: int = Field(
        default=5, ge=1, description="Longest wait for open requests at shutdown, in whole seconds."
    )
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After sent with a 503.")
    max_inflated_bytes: int = Field(
        default=8 << 20, gt=0, description="Largest body after gzip decompression (stops decompression bombs)."
    )
    max_in_flight: int = Field(
        default=4000, gt=0, description="Most readings waiting for JetStream's acknowledgement per ingest process."
    )
    ingest_rate_per_device_per_s: float = Field(
        default=100.0,
        ge=0,
        description="Average readings per second one device (site.device) may send; 0 for no limit.",
    )
    ingest_burst_per_device: int = Field(
        default=1000, gt=0, description="Readings a device may send at once above its rate; at least max_batch."
    )
    ingest_rate_max_devices: int = Field(
        default=100_000, gt=0, description="Devices whose rate is tracked at once; the least recently seen go first."
    )

    # Stream service
    keepalive_s: float = Field(default=15.0, gt=0, description="Quiet time before a keep-alive comment.")
    retry_ms: int = Field(default=2000, ge=0, description="Reconnect delay hint sent to SSE clients.")
    max_patterns: int = Field(default=32, gt=0, description="Most topic patterns on one SSE connection.")
    max_replay: int = Field(
        default=100_000, gt=0, description="Most stream sequences one resume replays; beyond it 'reset' says where."
    )
    live_feed_max_filters: int = Field(
        default=256,
        ge=1,
        le=1024,
        description=(
            "Most filter subjects of a stream process's live JetStream consumer: it carries only what its streams "
            "follow, whole sites past this, then everything."
        ),
    )
    max_concurrent_replays: int = Field(
        default=64, gt=0, description="Replays and snapshots run at once; others wait their turn."
    )
    max_snapshot_topics: int = Field(
        default=10_000,
        gt=0,
        description="Most topics in one snapshot=latest, the most recently updated; beyond it 'reset' says how many.",
    )
    max_rate_per_s: float = Field(
        default=200.0, gt=0, description="Most reading events per second per connection; beyond it readings conflate."
    )
    max_events: int = Field(default=0, ge=0, description="Most events per connection before 'end'; 0 for no limit.")
    max_lifetime_s: float = Field(
        default=3600.0, ge=0, description="Longest connection before 'end' (minus up to 10% jitter); 0 for none."
    )
    max_connections: int = Field(default=10000, gt=0, description="Most open SSE connections per process.")
    max_connections_per_client: int = Field(
        default=64, gt=0, description="Most open SSE connections per client address."
    )
    max_connects_per_s: float = Field(default=500.0, gt=0, description="Most new SSE connections per second.")
    max_buffer_bytes: int = Field(
        default=1 << 20,
        gt=0,
        description=(
            "Bytes a connection may have waiting; beyond it readings conflate, and conflated readings beyond it "
            "end the stream."
        ),
    )
    slow_consumer_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a connection may have bytes waiting with none reaching its client before it is closed.",
    )
    max_pending_bytes: int = Field(
        default=128 << 20,
        gt=0,
        description=(
            "Bytes all SSE connections of the process may have waiting; beyond it those furthest behind are "
            "conflated, then closed."
        ),
    )
    sse_send_buffer_bytes: int = Field(
        default=64 << 10,
        ge=0,
        description="Kernel send buffer (SO_SNDBUF, doubled by the kernel) of each SSE socket; 0 leaves the kernel's.",
    )
    overload_retry_ms: int = Field(
        default=5000,
        ge=0,
        description=(
            "Reconnect hint for a connection refused by a cap or at drain (each gets half to all of it, at random)."
        ),
    )

    # Auth
    auth: Literal["off", "required"] = Field(
        default="off", description="off, or required: every POST and stream needs a token or an API key."
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="HS256 secret (at least 32 bytes) that tokens are signed with.",
        json_schema_extra=ENV_ONLY,
    )
    jwt_secret_file: Path | None = Field(
        default=None, description="File holding the HS256 secret (instead of jwt_secret).", json_schema_extra=ENV_ONLY
    )
    jwt_public_keys_file: Path | None = Field(
        default=None,
        description="PEM file with one public key, or JWKS with several chosen by kid (RS256, ES256, EdDSA); re-read "
        "when it changes.",
        json_schema_extra=ENV_ONLY,
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="Device API keys: SHA-256 hashes with their publish patterns; re-read when it changes.",
        json_schema_extra=ENV_ONLY,
    )
    jwt_audience: str | None = Field(default=None, description="Audience (aud) a token must name; unchecked if unset.")
    jwt_issuer: str | None = Field(default=None, description="Issuer (iss) a token must name; unchecked if unset.")
    jwt_leeway_s: float = Field(
        default=30.0, ge=0, le=300, description="Clock skew allowed when checking a token's exp and nbf."
    )
    auth_query_token: bool = Field(
        default=False, description="Also read the stream's token from ?access_token= (never logged)."
    )
    auth_cookie_name: str = Field(
        default="telemetry_token",
        pattern=TOKEN_PATTERN,
        description="Cookie the stream reads a token from when no Authorization header is sent.",
    )
    docs: bool = Field(default=True, description="Serve the API documentation: /docs (Swagger UI) and /openapi.json.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default=[],
        description=(
            "Origins (scheme://host[:port], comma separated) whose pages may call the services from a browser, "
            "with credentials; empty: no CORS headers."
        ),
    )

    # Logs
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Least level logged.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="json, console, or auto (console on a terminal, json otherwise)."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """An empty value leaves an optional setting unset: the Helm chart renders every setting ("" for none)."""
        if value == "" and info.field_name is not None and cls.model_fields[info.field_name].default is None:
            return None
        return value

    @field_validator("nats_urls", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @field_validator("nats_urls")
    @classmethod
    def _require_url(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one NATS URL is needed")
        for url in value:
            scheme = url.split("://", 1)[0] if "://" in url else "nats"
            if scheme not in ("nats", "tls"):
                raise ValueError(f"{redact_url(url)}: only nats:// and tls:// URLs are supported (websockets are not)")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not ORIGIN_RE.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], nothing after (no '*', no path)")
        return value

    @model_validator(mode="after")
    def _client_certificate_with_key(self) -> Settings:
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("nats_tls_cert_file and nats_tls_key_file go together: a client certificate needs its key")
        return self

    @model_validator(mode="after")
    def _one_nats_identity(self) -> Settings:
        if self.nats_nkey_seed_file is not None and self.nats_creds_file is not None:
            raise ValueError(
                "give nats_nkey_seed_file or nats_creds_file, not both: a NATS connection authenticates as one user"
            )
        return self

    @model_validator(mode="after")
    def _window_within_age(self) -> Settings:
        if self.stream_max_age_s and self.stream_duplicate_window_s > self.stream_max_age_s:
            raise ValueError(
                "stream_duplicate_window_s must not exceed stream_max_age_s (JetStream rejects such a stream)"
            )
        return self

    @model_validator(mode="after")
    def _batch_within_burst(self) -> Settings:
        if self.ingest_rate_per_device_per_s and self.ingest_burst_per_device < self.max_batch:
            raise ValueError(
                "ingest_burst_per_device must be at least max_batch (else a full batch from one device never passes)"
            )
        return self

    @model_validator(mode="after")
    def _auth_has_keys(self) -> Settings:
        if self.jwt_secret is not None and self.jwt_secret_file is not None:
            raise ValueError("give jwt_secret or jwt_secret_file, not both")
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"jwt_secret must be at least {MIN_SECRET_BYTES} bytes (HS256 needs a key as long as its hash)"
            )
        sources = (self.jwt_secret, self.jwt_secret_file, self.jwt_public_keys_file, self.api_keys_file)
        if self.auth == "required" and all(source is None for source in sources):
            raise ValueError(
                "auth=required needs a key source: jwt_secret, jwt_secret_file, jwt_public_keys_file or api_keys_file"
            )
        return self
