"""The OpenAI-compatible llama.cpp server: start on a free loopback port, chat with `openai`, stop.

Uses the GGUF that the bundled-model package ships (no conversion needed), so it runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo_box.serve import ServerError, free_port, start_server


@pytest.fixture(scope="module")
def bundled_gguf() -> Path:
    from grpo_box.models import bundled_gguf_path

    return bundled_gguf_path()


def test_chat_completion_through_the_openai_client(bundled_gguf: Path, tmp_path: Path) -> None:
    import openai

    events: list[tuple[str, float]] = []
    handle = start_server(bundled_gguf, port=0, n_ctx=1024, progress=lambda m, f: events.append((m, f)), log_dir=tmp_path)
    try:
        assert handle.url.startswith("http://127.0.0.1:") and handle.url.endswith("/v1")
        assert handle.is_running() and events[-1][1] == 1.0 and handle.url in events[-1][0]
        assert "Open WebUI" in handle.describe() and handle.url in handle.describe()
        port = handle.url.rsplit(":", 1)[1].split("/")[0]
        assert f"--host 0.0.0.0 and use http://host.docker.internal:{port}/v1" in handle.describe()
        client = openai.OpenAI(base_url=handle.url, api_key="not-needed", timeout=60)
        assert [m.id for m in client.models.list().data] == [handle.model]
        reply = client.chat.completions.create(
            model=handle.model, messages=[{"role": "user", "content": "Name three primary colors."}],
            max_tokens=64, temperature=0,
        )
        choice = reply.choices[0]
        assert choice.message.content.strip() and choice.finish_reason == "stop"
        assert "<|im_end|>" not in choice.message.content
    finally:
        handle.stop()
    assert not handle.is_running()


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="export a GGUF first"):
        start_server(tmp_path / "nope.gguf")


def test_a_broken_model_reports_the_server_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(ServerError, match="exited with code"):
        start_server(bad, port=free_port(), timeout=60, log_dir=tmp_path)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
