"""The other ranks of a tensor-parallel replica: started by rank 0's engine, driven step by step.

Rank 0 owns everything but a share of the model: the scheduler, the radix cache, the sampler. Ranks
1..N-1 are child processes (`python -m preble.engine.tp_ranks`) on the same host that hold their
shard of the weights and of the KV pool; for each step rank 0 broadcasts the `StepInput` (msgpack
bytes over a gloo group, never pickle) and all ranks run the same forward pass, whose all-reduces
run over the device group (NCCL on GPUs, gloo on CPU). An empty message stops them. A rank that
dies makes the next collective fail after the configured timeout, which stops the engine.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import weakref
from dataclasses import dataclass

import msgspec
import torch
import torch.distributed as dist

from ..processes import spawn_tied
from .config import EngineConfig
from .model_runner import StepInput
from .parallel import TensorParallel, init_group


class RankSpec(msgspec.Struct):
    """What a rank process is told on its standard input."""

    config: EngineConfig
    rank: int
    init_method: str
    num_threads: int


def rank_device(config: EngineConfig, rank: int) -> torch.device:
    """Rank r of a replica uses the r-th GPU from the configured one (or the CPU)."""
    device = torch.device(config.device)
    if device.type != "cuda" or config.tensor_parallel_size == 1:
        return device
    return torch.device("cuda", (device.index or 0) + rank)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Channel:
    """Rank 0 -> all: length-prefixed byte messages broadcast over a gloo group."""

    group: object

    def send(self, data: bytes) -> None:
        dist.broadcast(torch.tensor([len(data)], dtype=torch.int64), src=0, group=self.group)
        if data:
            dist.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8), src=0, group=self.group)

    def recv(self) -> bytes:
        size = torch.empty(1, dtype=torch.int64)
        dist.broadcast(size, src=0, group=self.group)
        if not size.item():
            return b""
        buf = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.broadcast(buf, src=0, group=self.group)
        return buf.numpy().tobytes()


def _join(config: EngineConfig, rank: int, init_method: str) -> tuple[TensorParallel, Channel]:
    tp = init_group(rank, config.tensor_parallel_size, init_method, rank_device(config, rank),
                    config.tensor_parallel_timeout_s)
    return tp, Channel(dist.new_group(backend="gloo") if rank_device(config, rank).type == "cuda" else tp.group)


class TPRanks:
    """Rank 0's handle on the other ranks of its replica."""

    def __init__(self, config: EngineConfig) -> None:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        spec = {"config": msgspec.to_builtins(config), "init_method": init_method,
                "num_threads": torch.get_num_threads()}
        self.procs = []
        for rank in range(1, config.tensor_parallel_size):
            proc = spawn_tied([sys.executable, "-m", "preble.engine.tp_ranks"], signum=signal.SIGKILL,
                              stdin=subprocess.PIPE)
            proc.stdin.write(json.dumps({**spec, "rank": rank}).encode())
            proc.stdin.close()
            self.procs.append(proc)
        self.tp, self.channel = _join(config, 0, init_method)
        # A script that never calls close() still stops its ranks before the interpreter exits;
        # otherwise they meet a closed connection and print its traceback.
        self._finalizer = weakref.finalize(self, _stop_ranks, self.channel, self.procs)

    def start(self, num_pages: int) -> None:
        """Tell the ranks the KV pool size rank 0 chose; they then build their shard."""
        self.channel.send(msgspec.msgpack.encode(num_pages))

    def broadcast(self, step: StepInput) -> None:
        self.channel.send(step.encode())

    def stop(self) -> None:
        """Stop the other ranks and leave the process group (a process joins one at a time)."""
        self._finalizer()


def _stop_ranks(channel: Channel, procs: list[subprocess.Popen], timeout_s: float = 30.0) -> None:
    if not dist.is_initialized():
        return
    channel.send(b"")
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    dist.destroy_process_group()


def run_rank(spec: RankSpec) -> None:
    """A non-zero rank: join, build this rank's shard, then run every step rank 0 sends."""
    from .rank import build_runner, load_rank_model

    torch.set_num_threads(spec.num_threads)
    torch.manual_seed(spec.config.seed)
    device = rank_device(spec.config, spec.rank)
    tp, channel = _join(spec.config, spec.rank, spec.init_method)
    model = load_rank_model(spec.config, tp, device)
    num_pages = msgspec.msgpack.decode(channel.recv(), type=int)
    runner = build_runner(spec.config, model, num_pages, device, sampler=None)
    with torch.inference_mode():
        while data := channel.recv():
            runner.forward(StepInput.decode(data))
    dist.destroy_process_group()


if __name__ == "__main__":
    run_rank(msgspec.convert(json.loads(sys.stdin.buffer.read()), RankSpec))
