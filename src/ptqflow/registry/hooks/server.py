"""``ptqflow hook serve``: receives MLflow registry webhooks and triggers pipeline runs.

Checks, in order, each answered without triggering anything:

====================================================  ===========================================
request                                               answer
====================================================  ===========================================
no Content-Length / body over server.max_body_bytes   411 / 413 (the body is not read)
X-MLflow-Signature/-Timestamp/-Delivery-Id missing    400
signature is not v1 HMAC-SHA256 of id.timestamp.body  401
timestamp older/newer than timestamp_tolerance_s      401 (stale or replayed)
delivery id already accepted                          409 (replayed)
body not a JSON object                                400
event not subscribed, version without opt-in tag,
an INT8 target model, or a version already handled    200 {"status": "ignored" | "duplicate"}
version unknown, without an .onnx artifact, no data   422 {"status": "rejected"} (MLflow does not retry)
registry or orchestrator unreachable after retries    503 + Retry-After (MLflow retries the delivery)
run started                                           202 {"status": "triggered", "run_id": ...}
trigger call still running at server.ack_timeout_s    202 {"status": "pending"} (the worker finishes it)
====================================================  ===========================================

A delivery id is remembered once its signature and timestamp check out; after a 503 it is forgotten again,
so MLflow's retry of the same delivery is accepted. Model versions are deduplicated in memory while their
trigger is in flight and, durably, by the ``ptqflow.run`` tag written on the source version after the
trigger. Triggers run on a small worker pool; a request waits at most ``ack_timeout_s`` for the outcome
(retries stop at that deadline) and never for the pipeline. A "pending" trigger that fails afterwards is
logged and its version released; ``hook poll`` (the CronJob) picks such a version up. ``GET /healthz``
answers 200 while the process serves; ``GET /readyz`` 200 when the orchestrator answered a probe (3 s
timeout) in the last 10 s, 503 otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ptqflow.registry.hooks.config import HookConfig
from ptqflow.registry.hooks.core import (DUPLICATE, IGNORED, PENDING, REJECTED, TRIGGERED, UNAVAILABLE, HookCore,
                                Outcome, monotonic_deadline)
from ptqflow.registry.hooks.orchestrators import OrchestratorRejected, OrchestratorUnavailable
from ptqflow.logs import get_logger

SIGNATURE = "X-MLflow-Signature"
TIMESTAMP = "X-MLflow-Timestamp"
DELIVERY = "X-MLflow-Delivery-Id"
RETRY_AFTER_S = 30
_READY_CACHE_S = 10.0
log = get_logger("hook")

STATUS = {TRIGGERED: HTTPStatus.ACCEPTED, PENDING: HTTPStatus.ACCEPTED, IGNORED: HTTPStatus.OK,
          DUPLICATE: HTTPStatus.OK, REJECTED: HTTPStatus.UNPROCESSABLE_ENTITY,
          UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE}


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature: ``v1,`` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}"))."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class ExpiringSet:
    """Keys remembered for ``ttl`` seconds; thread-safe ``add`` that says whether the key was new."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._items: dict[Any, float] = {}
        self._lock = threading.Lock()

    def add(self, key: Any) -> bool:
        now = time.monotonic()
        with self._lock:
            self._items = {k: exp for k, exp in self._items.items() if exp >= now}
            if key in self._items:
                return False
            self._items[key] = now + self.ttl
            return True

    def discard(self, key: Any) -> None:
        with self._lock:
            self._items.pop(key, None)


class HookService:
    """The webhook logic without HTTP: ``receive`` maps (headers, body) to (status, answer)."""

    def __init__(self, cfg: HookConfig, core: HookCore, secret: str, workers: int = 2):
        self.cfg = cfg
        self.core = core
        self._secret = secret
        self.deliveries = ExpiringSet(cfg.server.dedupe_ttl_s)
        self.versions = ExpiringSet(cfg.server.dedupe_ttl_s)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptqflow-hook")
        self._ready_at = 0.0
        self._ready_lock = threading.Lock()

    def authenticate(self, headers, body: bytes) -> tuple[int, dict] | None:
        """None when the delivery is signed, fresh and new; else the (status, answer) refusing it."""
        delivery, stamp, signature = (headers.get(h) for h in (DELIVERY, TIMESTAMP, SIGNATURE))
        missing = [h for h, v in ((DELIVERY, delivery), (TIMESTAMP, stamp), (SIGNATURE, signature)) if not v]
        if missing:
            return HTTPStatus.BAD_REQUEST, {"error": f"missing header(s) {', '.join(missing)}"}
        if not hmac.compare_digest(sign(self._secret, delivery, stamp, body).encode(), signature.strip().encode()):
            return HTTPStatus.UNAUTHORIZED, {"error": "signature does not match"}
        try:
            age = time.time() - int(stamp)
        except ValueError:
            return HTTPStatus.BAD_REQUEST, {"error": f"{TIMESTAMP} is not a unix timestamp"}
        if abs(age) > self.cfg.server.timestamp_tolerance_s:
            return HTTPStatus.UNAUTHORIZED, {"error": f"stale delivery: timestamp is {age:.0f}s off "
                                                      f"(tolerance {self.cfg.server.timestamp_tolerance_s}s)"}
        if not self.deliveries.add(delivery):
            return HTTPStatus.CONFLICT, {"error": f"delivery {delivery} was already received (replay)"}
        return None

    def receive(self, headers, body: bytes) -> tuple[int, dict]:
        """Handle one POST /webhook whose body has been read (size already checked)."""
        refused = self.authenticate(headers, body)
        if refused:
            log.warning("hook: refused delivery %s: %s", headers.get(DELIVERY), refused[1]["error"])
            return refused
        delivery = headers.get(DELIVERY)
        try:
            event = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"}
        if not isinstance(event, dict):
            return HTTPStatus.BAD_REQUEST, {"error": "body is not a JSON object"}
        outcome = self._dispatch(event)
        if outcome.status == UNAVAILABLE:
            self.deliveries.discard(delivery)  # MLflow retries this delivery id: accept it then
        log.info("hook: delivery %s (%s.%s): %s %s", delivery, event.get("entity"), event.get("action"),
                 outcome.status, outcome.reason)
        return STATUS[outcome.status], outcome.to_dict()

    def _dispatch(self, event: dict) -> Outcome:
        screened = self.core.screen_event(event)
        if isinstance(screened, Outcome):
            return screened
        name, version = screened
        key = (name, version)
        if not self.versions.add(key):
            return Outcome(DUPLICATE, "a trigger for this version is already in flight or done", name, version)
        deadline = monotonic_deadline(self.cfg.server.ack_timeout_s)
        future = self.pool.submit(self._job, key, deadline)
        try:
            return future.result(timeout=self.cfg.server.ack_timeout_s)
        except FutureTimeout:
            return Outcome(PENDING, "trigger still retrying in the background", name, version)

    def _job(self, key: tuple[str, str], deadline: float) -> Outcome:
        try:
            outcome = self.core.handle(*key, deadline=deadline)
        except Exception as err:  # a bug must not leave the version marked as handled
            self.versions.discard(key)
            log.error("hook: trigger of %s/%s failed: %s: %s", *key, type(err).__name__, err)
            raise
        if outcome.status not in (TRIGGERED, DUPLICATE):
            self.versions.discard(key)
        if outcome.status in (UNAVAILABLE, REJECTED):
            log.error("hook: models:/%s/%s not triggered: %s", *key, outcome.reason)
        return outcome

    def ready(self) -> tuple[bool, str]:
        """Whether the orchestrator answered a probe recently (probes at most every 10 s)."""
        with self._ready_lock:
            if time.monotonic() - self._ready_at < _READY_CACHE_S:
                return True, "ok"
            try:
                self.core.orchestrator.ping()
            except (OrchestratorUnavailable, OrchestratorRejected) as err:
                return False, str(err)
            self._ready_at = time.monotonic()
            return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    service: HookService
    server_version = "ptqflow-hook"
    sys_version = ""

    def log_message(self, fmt: str, *args) -> None:  # request lines only: no headers, no bodies
        log.debug("hook: %s %s", self.address_string(), fmt % args)

    def _answer(self, status: int, body: dict, extra_headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        elif self.path == "/readyz":
            ok, reason = self.service.ready()
            self._answer(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                         {"status": "ready" if ok else "not ready", "reason": reason})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/webhook":
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        length = self.headers.get("Content-Length")
        limit = self.service.cfg.server.max_body_bytes
        if length is None or not length.isdigit():
            self.close_connection = True
            self._answer(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            return
        if int(length) > limit:
            self.close_connection = True
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body of {length} bytes exceeds {limit}"})
            return
        body = self.rfile.read(int(length))
        status, answer = self.service.receive(self.headers, body)
        extra = {"Retry-After": str(RETRY_AFTER_S)} if status == HTTPStatus.SERVICE_UNAVAILABLE else None
        self._answer(status, answer, extra)


def make_server(service: HookService, host: str, port: int) -> ThreadingHTTPServer:
    """A threading HTTP server bound to (host, port) serving ``service``."""
    handler = type("HookHandler", (_Handler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(cfg: HookConfig, core: HookCore, secret: str, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; stops the worker pool after in-flight triggers finish."""
    import signal

    service = HookService(cfg, core, secret)
    server = make_server(service, host, port)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    log.info("hook: serving on %s:%d (orchestrator %s, events %s)", host, server.server_address[1],
             cfg.orchestrator, ", ".join(cfg.events))
    try:
        server.serve_forever()
    finally:
        server.server_close()
        service.pool.shutdown(wait=True)
