"""What a failed call to Books means for a retry: never sent (retry as is) or maybe done
(look the record up first). Real sockets on 127.0.0.1, no Zoho."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from crm_to_books.entities import get_entity
from crm_to_books.zoho import AccessToken, Category, ZohoClient

ORG, CRM = "700100200", "4876876000000624001"


def token(api_domain: str) -> AccessToken:
    return AccessToken("1000.test-token", api_domain, expires_at=2**40)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts and reads the request, never answers: Zoho slow after taking the import."""
    listener = socket.create_server(("127.0.0.1", 0))
    taken: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            taken.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in taken:
        conn.close()
    listener.close()


@pytest.fixture
def resetting_server() -> Iterator[int]:
    """Reads the request, then drops the connection without an answer."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    thread.join(timeout=5)
    listener.close()


def test_a_refused_connection_was_never_sent(closed_port: int) -> None:
    client = ZohoClient(connect_timeout=1, read_timeout=1)
    answer = client.import_record(
        token(f"http://127.0.0.1:{closed_port}"), get_entity("account"), ORG, CRM
    )
    assert answer.category is Category.NOT_SENT
    assert answer.http_status is None and "1000.test-token" not in answer.message


def test_an_invalid_api_domain_was_never_sent() -> None:
    answer = ZohoClient().import_record(token("http://"), get_entity("account"), ORG, CRM)
    assert answer.category is Category.NOT_SENT


def test_a_read_timeout_after_sending_is_an_unknown_outcome(silent_server: int) -> None:
    client = ZohoClient(connect_timeout=1, read_timeout=0.3)
    answer = client.import_record(
        token(f"http://127.0.0.1:{silent_server}"), get_entity("account"), ORG, CRM
    )
    assert answer.category is Category.UNKNOWN


def test_a_connection_dropped_after_sending_is_an_unknown_outcome(resetting_server: int) -> None:
    client = ZohoClient(connect_timeout=1, read_timeout=2)
    answer = client.import_record(
        token(f"http://127.0.0.1:{resetting_server}"), get_entity("account"), ORG, CRM
    )
    assert answer.category is Category.UNKNOWN
