"""The reward.url client against a real HTTP server on loopback: transient failures (a dropped connection, 503,
429) are retried until the service scores; a 400, a body without rewards and a service that never recovers
fail with one line naming spec.reward.url; the client pickles (it travels to the rollout actors)."""

from __future__ import annotations

import json
import pickle
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kuberlhf.errors import UserError
from kuberlhf.reward_client import RemoteReward


class Script:
    """What the server does with each request, in order; the last entry repeats."""

    def __init__(self, *answers: str) -> None:
        self.answers, self.requests = list(answers), []

    def next(self) -> str:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def serve():
    servers = []

    def start(script: Script) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                script.requests.append(body)
                answer = script.next()
                if answer == "drop":  # close the connection without answering
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, _, text = answer.partition(" ")
                if status == "200" and not text:
                    text = json.dumps({"rewards": [float(len(c)) for c in body["completions"]]})
                self.send_response(int(status))
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/score"

    yield start
    for server in servers:
        server.shutdown()


def test_transient_failures_are_retried_until_the_service_scores(serve):
    script = Script("drop", "503 warming up", "429 slow down", "200")
    rewards = RemoteReward(serve(script), attempts=4, backoff_s=0.01)(["1+1="], ["2", "22"])
    assert rewards == [1.0, 2.0]
    assert len(script.requests) == 4 and all(r == {"prompts": ["1+1="], "completions": ["2", "22"]}
                                              for r in script.requests)


def test_a_service_that_never_recovers_fails_after_its_attempts(serve):
    script = Script("503 overloaded")
    with pytest.raises(UserError, match=r"^spec.reward.url: http://127.0.0.1:\d+/score answered HTTP 503: "
                                        r"overloaded \(3 attempts\)$"):
        RemoteReward(serve(script), attempts=3, backoff_s=0.01)(["p"], ["c"])
    assert len(script.requests) == 3


@pytest.mark.parametrize("answer, message", [
    ("400 1 prompts but 0 completions", r"answered HTTP 400: 1 prompts but 0 completions$"),
    ('200 {"scores": [1]}', r"answered without a `rewards` list: '\{\"scores\": \[1\]\}'$"),
])
def test_an_answer_a_retry_would_not_change_fails_at_once(serve, answer, message):
    script = Script(answer)
    with pytest.raises(UserError, match=message):
        RemoteReward(serve(script), attempts=4, backoff_s=0.01)(["p"], ["c"])
    assert len(script.requests) == 1


def test_nothing_listening_is_named(serve):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/score"
    with pytest.raises(UserError, match=r"^spec.reward.url: cannot reach .*/score \(2 attempts\): ConnectError"):
        RemoteReward(url, attempts=2, backoff_s=0.01)(["p"], ["c"])


def test_the_client_pickles_after_use(serve):
    remote = RemoteReward(serve(Script("200")), backoff_s=0.01)
    assert remote(["p"], ["abc"]) == [3.0]
    copy = pickle.loads(pickle.dumps(remote))
    assert copy(["p"], ["ab"]) == [2.0] and copy.url == remote.url
