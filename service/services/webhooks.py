"""Webhook delivery from the outbox table: POST the payload signed per the Standard Webhooks
specification, retry with exponential backoff. Rows are claimed by moving `next_attempt_at` forward
with a compare-and-set, so several processes may run deliveries without sending one twice at the same time.

Headers: `webhook-id` (the delivery id, the same on every retry: receivers deduplicate on it),
`webhook-timestamp` (seconds) and `webhook-signature: v1,BASE64`, BASE64 = HMAC-SHA256(key,
"{id}.{timestamp}.{body}"). Receivers verify with any Standard Webhooks library and the secret in
`whsec_...` form (Settings.webhook_secret_text)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
from sqlalchemy import select, update

from service.db import Database
from service.db.models import WebhookDelivery

TIMEOUT_S = 10.0


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def backoff_s(attempts: int) -> float:
    return min(2.0 ** attempts, 600.0)


def deliver_due(db: Database, secret: bytes, max_attempts: int, limit: int = 20) -> int:
    """Send the deliveries that are due; returns how many were delivered."""
    now = time.time()
    with db.read() as s:
        due = list(s.execute(select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
                             .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                             .order_by(WebhookDelivery.next_attempt_at).limit(limit)).all())
    delivered = 0
    for delivery_id, due_at in due:
        with db.write() as s:  # claim: push next_attempt_at past the request's timeout
            claimed = s.execute(update(WebhookDelivery)
                                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                                       WebhookDelivery.next_attempt_at == due_at)
                                .values(next_attempt_at=now + TIMEOUT_S * 3,
                                        attempts=WebhookDelivery.attempts + 1)).rowcount
            row = s.get(WebhookDelivery, delivery_id) if claimed else None
            if row is None:
                continue
            url, event, payload, attempts = row.url, row.event, row.payload, row.attempts
        body = json.dumps({"event": event, "delivery_id": delivery_id, **payload}, sort_keys=True).encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "webhook-id": delivery_id, "webhook-timestamp": ts,
                   "webhook-signature": sign(secret, delivery_id, ts, body)}
        status, error = None, None
        try:
            resp = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_S)
            status = resp.status_code
            ok = 200 <= status < 300
            if not ok:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        with db.write() as s:
            row = s.get(WebhookDelivery, delivery_id)
            row.response_status, row.last_error = status, error
            if ok:
                row.status, row.delivered_at = "delivered", time.time()
                delivered += 1
            elif attempts >= max_attempts:
                row.status = "failed"
            else:
                row.next_attempt_at = time.time() + backoff_s(attempts)
    return delivered
