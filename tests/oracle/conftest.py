"""Shared pytest fixtures for the oracle tests (real dstack / gpuhunt vs. our code).

Our side is exercised through the dstack-sdk examples, built once per session with cargo.
"""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("DSTACK_SHARED_DIR", ROOT.parent / "shared"))


def target_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


_built: dict[str, pathlib.Path] = {}


def build_example(name: str) -> pathlib.Path:
    """Builds `cargo --example NAME` of dstack-sdk (debug) and returns the binary's path."""
    if name not in _built:
        subprocess.run(
            ["cargo", "build", "-q", "-p", "dstack-sdk", "--example", name],
            cwd=ROOT,
            check=True,
        )
        _built[name] = target_dir() / "debug" / "examples" / name
    return _built[name]


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    assert SHARED.is_dir(), f"shared/ reference folder not found at {SHARED}"
    return SHARED


def build_server() -> pathlib.Path:
    """Builds our `dstack-server` binary (debug) and returns its path
    (`DSTACK_SERVER_BIN` names a prebuilt one instead)."""
    if os.environ.get("DSTACK_SERVER_BIN"):
        return pathlib.Path(os.environ["DSTACK_SERVER_BIN"])
    if "dstack-server" not in _built:
        subprocess.run(
            ["cargo", "build", "-q", "-p", "server-bin", "--bin", "dstack-server"],
            cwd=ROOT,
            check=True,
        )
        _built["dstack-server"] = target_dir() / "debug" / "dstack-server"
    return _built["dstack-server"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthcheck", timeout=1) as r:
                if b"running" in r.read():
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            proc.kill()
            raise RuntimeError(f"{what} did not start:\n{out}")
        time.sleep(0.1)


@pytest.fixture()
def our_server(tmp_path):
    """Our server on a free loopback port in a throwaway server dir and HOME.

    Yields a dict with url, token, home (the HOME the CLI should use) and env.
    """
    binary = build_server()
    port = _free_port()
    home = tmp_path / "home"
    home.mkdir()
    token = "peer-admin-token"
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        DSTACK_SERVER_DIR=str(tmp_path / "server"),
        DSTACK_SERVER_PORT=str(port),
        DSTACK_SERVER_HOST="127.0.0.1",
        DSTACK_SERVER_ADMIN_TOKEN=token,
        DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1",
    )
    proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, proc, 30, "our server")
    try:
        yield {"url": url, "token": token, "home": home, "env": env, "proc": proc}
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture()
def python_server(tmp_path):
    """The real dstack server (the oracle venv's `dstack server`) on a free loopback port."""
    import sys

    port = _free_port()
    home = tmp_path / "pyhome"
    home.mkdir()
    token = "peer-admin-token"
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        DSTACK_SERVER_DIR=str(tmp_path / "pyserver"),
        DSTACK_SERVER_ADMIN_TOKEN=token,
        DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT="1",
        DSTACK_SERVER_BACKGROUND_PROCESSING_DISABLED="1",
    )
    dstack = pathlib.Path(sys.executable).parent / "dstack"
    proc = subprocess.Popen(
        [str(dstack), "server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, proc, 120, "the real dstack server")
    try:
        yield {"url": url, "token": token, "home": home, "env": env, "proc": proc}
    finally:
        proc.kill()
        proc.wait()
