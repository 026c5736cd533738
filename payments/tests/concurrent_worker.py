"""Child process for the concurrency tests: POST signed webhooks from many threads at once.

Deliberately free of Django (it is run as a plain script): it only speaks HTTP. Protocol
on stdin/stdout, one JSON line each way:

    parent -> child  {"url": ..., "deliveries": [{"body": str, "signature": str}, ...]}
    child -> parent  "ready"        (every thread started and waiting)
    parent -> child  "go"           (sent to all children once all are ready)
    child -> parent  [[status, response body], ...] in delivery order

A delivery that could not be sent at all is reported with status null and the error.
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request

SIGNATURE_HEADER = "X-DynoPay-Signature"
TIMEOUT_SECONDS = 60


def post(url: str, body: bytes, signature: str) -> tuple[int, str]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:  # 4xx/5xx still carry the outcome body
        return exc.code, exc.read().decode()


def main() -> None:
    job = json.loads(sys.stdin.readline())
    deliveries = job["deliveries"]
    barrier = threading.Barrier(len(deliveries) + 1)
    results: list[tuple[int | None, str] | None] = [None] * len(deliveries)

    def send(index: int, delivery: dict) -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            results[index] = post(job["url"], delivery["body"].encode(), delivery["signature"])
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            elapsed = time.monotonic() - started
            results[index] = (None, f"{type(exc).__name__}: {exc} (after {elapsed:.3f} s)")

    threads = [
        threading.Thread(target=send, args=(i, d), daemon=True) for i, d in enumerate(deliveries)
    ]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("no go signal from the parent")
    barrier.wait()
    for thread in threads:
        thread.join()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
