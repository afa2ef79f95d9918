"""catdog.serving.server: the serve and client command lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import CLASSES, free_ports, run_catdog


@pytest.mark.slow  # spawns the server and the client
def test_serve_and_client_command_lines(exported, jpegs, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "catdog.serve", f"--model_base_path={exported[2]}", "--port=0",
         f"--rest_api_port={free_ports(1)[0]}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith("serving catdog on gRPC 127.0.0.1:"), banner
        grpc_port = banner.split("127.0.0.1:")[1].split()[0]
        rest_url = banner.split("REST ")[1].strip()
        for server in (f"grpc://127.0.0.1:{grpc_port}", rest_url):
            result = run_catdog("client", f"--server={server}", "--model=catdog",
                                str(jpegs[0]), str(tmp_path / "missing.jpg"))
            assert result.returncode == 1
            path, label, probability = result.stdout.strip().split("\t")
            assert path == str(jpegs[0]) and label in CLASSES and 0.5 <= float(probability)
            assert "missing.jpg\terror: cannot read image" in result.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_refuses_a_base_path_without_versions(tmp_path):
    result = run_catdog("serve", f"--model_base_path={tmp_path}", "--port=0", "--rest_api_port=0")
    assert result.returncode == 2
    assert "holds no loadable version" in result.stderr
