"""The planner on a real vLLM (PyPI's CPU build serving SmolLM2; ``scripts/setup_vllm.sh``), side by side
with vLLM asked directly, in one run (issue 25 §3), and the spread of fresh-plan times (its long tail):

1. latency: the same request (the planner's messages, per-request grammar, banned words, seed: the same
   tokens) through ``POST /v1/plans`` and straight to vLLM, alternating, best of ``--repeats``; ratio
   (goal <= 1.05);
2. concurrency 1 / 4 / 8 clients: plans/min and tokens/s through the planner and directly (goal:
   planner >= 0.95x direct at each level); ``--embedded`` adds the planner on its embedded llama.cpp;
3. edits: time to the first token of a conversation's next turn vs its fresh plan (prefix caching);
4. tail: fresh plans with the planner's defaults: tokens, attempts, cut off or not, seconds.

Run: ``python bench/vllm_bench.py`` (starts vLLM, a private redis-server and the planner; 15-30 minutes
on two CPU cores). Prints Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.planner_bench import QUALITY_PROMPTS, machine
from planner_service.llm.client import OpenAIClient
from planner_service.metrics import PlannerMetrics
from planner_service.planning import PlanInput, Planner
from planner_service.settings import PlannerSettings
from tests.planner.conftest import RunningPlanner, start_planner
from tests.planner.vllm_server import SERVED_NAME, RunningVllm, start_vllm
from tests.support import RedisServer

WINDOW = 8192


async def direct_body(vllm: RunningVllm, prompt: str, seed: int, max_tokens: int) -> dict:
    """What the planner sends vLLM for this plan (its settings as the planner resolves them)."""
    settings = PlannerSettings(llm_url=vllm.base_url, llm_kind="vllm", llm_model=SERVED_NAME, context_tokens=WINDOW)
    client = OpenAIClient(vllm.base_url, model=SERVED_NAME, kind="vllm")
    planner = Planner(client, settings, PlannerMetrics())
    request = PlanInput(prompt=prompt, seed=seed, max_new_tokens=max_tokens)
    constraints = planner.constraints(request)
    params = planner._params(request, 0, seed, constraints.banned_words)
    body = client.body(planner.messages(request), params, constraints.grammar, stream=False)
    body |= await client.ban_fields(params.banned_words)
    await client.aclose()
    return body


async def timed(call: Awaitable[httpx.Response]) -> tuple[float, dict]:
    started = time.perf_counter()
    response = await call
    response.raise_for_status()
    return time.perf_counter() - started, response.json()


async def latency(vllm: RunningVllm, planner: RunningPlanner, runs: int, tokens: int, repeats: int) -> list[str]:
    rows, ratios = [], []
    async with httpx.AsyncClient(timeout=900) as http:
        for run in range(runs):
            prompt, seed = QUALITY_PROMPTS[run], 100 + run
            body = await direct_body(vllm, prompt, seed, tokens)
            plan = {"prompt": prompt, "seed": seed, "max_new_tokens": tokens}
            service, direct, answers = [], [], {}
            for _ in range(repeats):  # alternating; the best of each: a shared machine only adds time
                seconds, answers["planner"] = await timed(http.post(f"{planner.url}/v1/plans", json=plan))
                service.append(seconds)
                seconds, answers["direct"] = await timed(http.post(f"{vllm.base_url}/chat/completions", json=body))
                direct.append(seconds)
            tokens_of = answers["direct"]["usage"]["completion_tokens"]
            same = answers["planner"]["usage"]["completion_tokens"] == tokens_of
            ratio = min(service) / min(direct)
            if same:
                ratios.append(ratio)
            rows.append(f"| {prompt} | {tokens_of} | {min(direct):.2f} | {min(service):.2f} | {ratio:.3f} | "
                        f"{'yes' if same else 'no'} |")  # fmt: skip
    median = f"**{statistics.median(ratios):.3f}**" if ratios else "no comparable run"
    header = ["| prompt | tokens | direct s | planner s | ratio | same tokens |", "|---|---|---|---|---|---|"]
    return [*header, *rows, "", f"Median ratio (runs with the same tokens): {median} (goal <= 1.05)"]


async def load(send: Callable[[httpx.AsyncClient, int], Awaitable[dict]], clients: int, each: int) -> tuple[float, int]:
    """``clients`` concurrent clients sending ``each`` requests; (seconds, completion tokens)."""
    tokens = 0

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for k in range(each):
            # Await first: "tokens += await ..." reads tokens before the await and loses the others' counts.
            answer = await send(http, index * each + k)
            tokens += int(answer["usage"]["completion_tokens"])

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return time.perf_counter() - started, tokens


async def concurrency(
    vllm: RunningVllm, planners: dict[str, RunningPlanner], levels: list[int], each: int, tokens: int
) -> list[str]:
    bodies = [await direct_body(vllm, QUALITY_PROMPTS[i % len(QUALITY_PROMPTS)], 200 + i, tokens)
              for i in range(max(levels) * each)]  # fmt: skip

    async def to_vllm(http: httpx.AsyncClient, i: int) -> dict:
        return (await timed(http.post(f"{vllm.base_url}/chat/completions", json=bodies[i])))[1]

    def to_planner(url: str) -> Callable[[httpx.AsyncClient, int], Awaitable[dict]]:
        async def send(http: httpx.AsyncClient, i: int) -> dict:
            plan = {"prompt": QUALITY_PROMPTS[i % len(QUALITY_PROMPTS)], "seed": 200 + i, "max_new_tokens": tokens}
            return (await timed(http.post(f"{url}/v1/plans", json=plan)))[1]

        return send

    rows = []
    for level in levels:
        seconds, done = await load(to_vllm, level, each)
        direct_rate = level * each * 60 / seconds, done / seconds
        rows.append(f"| {level} | vLLM directly | {direct_rate[0]:.1f} | {direct_rate[1]:.1f} | 1.00 |")
        for name, planner in planners.items():
            seconds, done = await load(to_planner(planner.url), level, each)
            rate = level * each * 60 / seconds, done / seconds
            ratio = f"{rate[1] / direct_rate[1]:.2f}" if name == "planner on vLLM" else "—"
            rows.append(f"| {level} | {name} | {rate[0]:.1f} | {rate[1]:.1f} | {ratio} |")
    header = ["| clients | path | plans/min | tokens/s | tokens/s vs direct |", "|---|---|---|---|---|"]
    return [*header, *rows, "", "Goal: the planner on vLLM >= 0.95x vLLM directly at each level."]


async def edits(planner: RunningPlanner, runs: int, tokens: int) -> list[str]:
    """Streamed fresh plan, then an edit of it: the planner's first_token_ms for each."""
    rows = []
    async with httpx.AsyncClient(base_url=planner.url, timeout=900) as http:
        for run in range(runs):
            fresh = await streamed(http, {"prompt": QUALITY_PROMPTS[run], "seed": run, "max_new_tokens": tokens})
            edit = await streamed(http, {"prompt": "add a small bird", "conversation_id": fresh["conversation_id"],
                                         "seed": run, "max_new_tokens": tokens})  # fmt: skip
            rows.append(f"| {QUALITY_PROMPTS[run]} | {fresh['usage']['prompt_tokens']} | "
                        f"{fresh['timings'].get('first_token_ms', 0):.0f} | {edit['usage']['prompt_tokens']} | "
                        f"{edit['timings'].get('first_token_ms', 0):.0f} |")  # fmt: skip
    header = ["| prompt | fresh prompt tokens | fresh first token ms | edit prompt tokens | edit first token ms |",
              "|---|---|---|---|---|"]  # fmt: skip
    return [*header, *rows]


async def streamed(http: httpx.AsyncClient, plan: dict) -> dict:


    async with aconnect_sse(http, "POST", "/v1/plans", json={**plan, "stream": True}) as source:
        async for event in source.aiter_sse():
            if event.event == "plan":
                return dict(json.loads(event.data))
            if event.event == "error":
                raise RuntimeError(event.data)
    raise RuntimeError("the stream ended without a plan")


async def tail(planner: RunningPlanner, runs: int) -> list[str]:
    rows, seconds = [], []
    async with httpx.AsyncClient(timeout=1800) as http:
        for run in range(runs):
            prompt = QUALITY_PROMPTS[run % len(QUALITY_PROMPTS)]
            took, plan = await timed(http.post(f"{planner.url}/v1/plans", json={"prompt": prompt, "seed": 300 + run}))
            seconds.append(took)
            rate = plan["timings"].get("tokens_per_second", 0)
            rows.append(f"| {prompt} | {plan['usage']['completion_tokens']} | {plan['attempts']} | "
                        f"{'yes' if plan['truncated'] else 'no'} | {rate:.1f} | {took:.1f} |")  # fmt: skip
    quantiles = statistics.quantiles(seconds, n=10, method="inclusive") if len(seconds) > 1 else seconds * 9
    header = ["| prompt | tokens | attempts | cut off | tokens/s | s |", "|---|---|---|---|---|---|"]
    return [*header, *rows, "", f"p50 {statistics.median(seconds):.1f} s, p90 {quantiles[-1]:.1f} s, "
            f"max {max(seconds):.1f} s"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="Prompts of the latency and edit measurements.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--levels", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--each", type=int, default=2, help="Requests per client at each concurrency level.")
    parser.add_argument("--tail-runs", type=int, default=12)
    parser.add_argument("--embedded", action="store_true", help="Also the planner on its embedded llama.cpp.")
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "concurrency", "edits", "tail"])
    parser.add_argument("--vllm-url", default=None, help="A vLLM already serving the converted SmolLM2 as "
                        f"{SERVED_NAME} with an {WINDOW}-token window (tests/planner/vllm_server.py), e.g. "
                        "http://127.0.0.1:8001/v1; default: start one.")  # fmt: skip
    args = parser.parse_args()
    print(f"Machine: {machine()}; SmolLM2-135M-Instruct (bf16) on vLLM's CPU build\n", flush=True)
    started = time.perf_counter()
    vllm = start_vllm(WINDOW) if args.vllm_url is None else RunningVllm(args.vllm_url, SERVED_NAME, Path(os.devnull))
    print(f"vLLM ready in {time.perf_counter() - started:.0f} s\n", flush=True)
    redis_server = RedisServer().start()
    planners = {"planner on vLLM": start_planner(redis_server.url, OMOST_PLANNER_LLM_URL=vllm.base_url,
                                                 OMOST_PLANNER_LLM_KIND="vllm")}  # fmt: skip
    if args.embedded:
        planners["planner on embedded llama.cpp"] = start_planner(redis_server.url)
    on_vllm = planners["planner on vLLM"]
    tokens = args.max_new_tokens
    try:
        if "latency" not in args.skip:
            print(f"## Latency: planner vs vLLM directly ({tokens} max new tokens)\n")
            print("\n".join(asyncio.run(latency(vllm, on_vllm, args.runs, tokens, args.repeats))), "\n", flush=True)
        if "concurrency" not in args.skip:
            print(f"## Concurrency ({args.each} plans per client, {tokens} max new tokens)\n")
            lines = asyncio.run(concurrency(vllm, planners, args.levels, args.each, tokens))
            print("\n".join(lines), "\n", flush=True)
        if "edits" not in args.skip:
            print(f"## Edits: first token of the next turn ({tokens} max new tokens)\n")
            print("\n".join(asyncio.run(edits(on_vllm, args.runs, tokens))), "\n", flush=True)
        if "tail" not in args.skip:
            print("## Fresh plans with the planner's defaults (the long tail)\n")
            print("\n".join(asyncio.run(tail(on_vllm, args.tail_runs))), "\n", flush=True)
    finally:
        for planner in planners.values():
            planner.child.stop()
        redis_server.stop()
        vllm.stop()
    print(f"Machine at the end: {machine()}")


if __name__ == "__main__":
    main()
