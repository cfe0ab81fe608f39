"""Starts `voxgate serve` as its own process for a benchmark, the way production runs it.

The benchmarks measure the gateway from outside, so it gets its own process (and its own GIL):
a client in the same process would steal the event loop it is measuring.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


TICKS = os.sysconf("SC_CLK_TCK")


def start_server(
    port: int, pipelines: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], float]:
    """The server process and its cold start: seconds from exec to `/readyz` answering 200."""
    cmd = [sys.executable, "-m", "gateway", "serve", "--pipelines", str(pipelines)]
    cmd += ["--port", str(port), "--max-sessions", "10000", "--max-connections-per-address", "0"]
    cmd += ["--max-unauthenticated-per-address", "10000", "--max-unauthenticated", "10000"]
    env = {**os.environ, **(env or {}), "NO_PROXY": "127.0.0.1,localhost"}
    started = time.monotonic()
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as ready:
                if ready.status == 200:
                    return server, time.monotonic() - started
        except OSError:
            if time.monotonic() > started + 30 or server.poll() is not None:
                raise SystemExit("the gateway did not start") from None
            time.sleep(0.01)


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counter(port: int, name: str, **labels: str) -> float:
    """A counter's value (summed over the label values not given) from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{name}_total"
        and all(sample.labels.get(k) == v for k, v in labels.items())
    )
