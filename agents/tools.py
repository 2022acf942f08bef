"""Declared agent tools: a loan calculator and a customer lookup, with allow-lists, schemas, timeouts and audit.

An agent may call only the tools its card lists (`tools: [loan_calculator]`). Arguments are validated by a pydantic
model before the tool runs; the tool runs in a worker thread with a timeout; every call (allowed or not) becomes a
`ToolCalled` event on the audit topic. Tools are plain Python functions over validated values: model output is
never evaluated or executed.

Who asks for a call: a generative backend through OpenAI tool calling (the specs from `openai_specs`), or, for the
offline extractive backend, a deterministic pattern on the request text (`triggered`): e.g. "monthly payment on a
200000 loan at 5% over 30 years" runs `loan_calculator`. The pattern is the only way the extractive backend uses
tools; it recognises the phrasings below and nothing else.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smolit.contracts import AgentCard, Event, ToolCalled


class LoanArgs(BaseModel):
    """An annuity loan: fixed monthly payments."""

    model_config = ConfigDict(extra="forbid")

    principal: float = Field(gt=0, le=1e10, description="Amount borrowed.")
    annual_rate_percent: float = Field(ge=0, le=100, description="Nominal yearly interest rate in percent.")
    years: float = Field(gt=0, le=100, description="Term in years.")


class CustomerArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="Customer id.")


@dataclass(frozen=True)
class ToolContext:
    pool: ConnectionPool | None


def loan_calculator(args: LoanArgs, _ctx: ToolContext) -> dict[str, Any]:
    months = round(args.years * 12)
    rate = args.annual_rate_percent / 100 / 12
    payment = args.principal / months if rate == 0 else args.principal * rate / (1 - (1 + rate) ** -months)
    total = payment * months
    return {
        "monthly_payment": round(payment, 2),
        "months": months,
        "total_paid": round(total, 2),
        "total_interest": round(total - args.principal, 2),
    }


def customer_lookup(args: CustomerArgs, ctx: ToolContext) -> dict[str, Any]:
    if ctx.pool is None:
        raise RuntimeError("no database configured for customer_lookup")
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 1000")
        row = conn.execute(
            "SELECT customer_id, name, segment, city, since FROM customers WHERE customer_id = %s",
            (args.customer_id,),
        ).fetchone()
    if row is None:
        return {"found": False, "customer_id": args.customer_id}
    customer_id, name, segment, city, since = row
    return {
        "found": True,
        "customer_id": customer_id,
        "name": name,
        "segment": segment,
        "city": city,
        "since": since.isoformat() if since else None,
    }


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[Any, ToolContext], dict[str, Any]]
    render: Callable[[BaseModel, dict[str, Any]], str]
    """One sentence stating the result (quoted in answers and given to generative models)."""


def _render_loan(args: BaseModel, result: dict[str, Any]) -> str:
    assert isinstance(args, LoanArgs)
    return (
        f"Loan calculator: a loan of {args.principal:,.2f} at {args.annual_rate_percent:g}% a year over "
        f"{args.years:g} years costs {result['monthly_payment']:,.2f} a month ({result['months']} payments, "
        f"{result['total_paid']:,.2f} in total, of which {result['total_interest']:,.2f} interest)."
    )


def _render_customer(args: BaseModel, result: dict[str, Any]) -> str:
    if not result.get("found"):
        return f"Customer lookup: no customer with id {result['customer_id']}."
    return (
        f"Customer lookup: {result['customer_id']} is {result['name']}, segment {result['segment']}, "
        f"city {result['city']}, customer since {result['since']}."
    )


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "loan_calculator",
            "Monthly payment, total paid and total interest of an annuity loan.",
            LoanArgs,
            loan_calculator,
            _render_loan,
        ),
        Tool(
            "customer_lookup",
            "Look up a customer's name, segment, city and start date by customer id.",
            CustomerArgs,
            customer_lookup,
            _render_customer,
        ),
    )
}


def openai_specs(names: Sequence[str]) -> list[dict[str, Any]]:
    """OpenAI function-tool definitions of the named tools (schemas from the pydantic models)."""
    specs = []
    for name in names:
        tool = TOOLS[name]
        schema = tool.args.model_json_schema()
        schema.pop("title", None)
        specs.append(
            {"type": "function", "function": {"name": name, "description": tool.description, "parameters": schema}}
        )
    return specs


_NUMBER = r"(\d{1,3}(?:[,' ]\d{3})+|\d+)(?:\.\d+)?\s*(k|thousand)?"
_LOAN = re.compile(
    r"(?P<principal>" + _NUMBER + r")\s*(?:€|\$|£|eur|euros?|usd|dollars?)?\s*(?:loan|mortgage|credit)\b"
    r".{0,40}?\bat\s+(?P<rate>\d+(?:\.\d+)?)\s*%"
    r".{0,30}?\b(?:over|for)\s+(?P<years>\d+(?:\.\d+)?)\s*(?:years?|yrs?)\b",
    re.IGNORECASE,
)
_CUSTOMER = re.compile(r"\bcustomer\s+(?:id\s+)?#?(?P<id>[A-Z]{1,4}-?\d{2,10})\b", re.IGNORECASE)


def _amount(text: str) -> float:
    digits = re.sub(r"[,' ]", "", text.lower()).replace("thousand", "k")
    return float(digits[:-1]) * 1000 if digits.endswith("k") else float(digits)


def triggered(card: AgentCard, text: str) -> list[tuple[str, dict[str, Any]]]:
    """Tool calls the offline backend makes for `text`: only the card's tools, only on their exact patterns."""
    calls: list[tuple[str, dict[str, Any]]] = []
    if "loan_calculator" in card.tools and (m := _LOAN.search(text)):
        calls.append(
            (
                "loan_calculator",
                {
                    "principal": _amount(m["principal"]),
                    "annual_rate_percent": float(m["rate"]),
                    "years": float(m["years"]),
                },
            )
        )
    if "customer_lookup" in card.tools and (m := _CUSTOMER.search(text)):
        calls.append(("customer_lookup", {"customer_id": m["id"].upper()}))
    return calls


@dataclass(frozen=True)
class ToolOutcome:
    tool: str
    ok: bool
    text: str
    """What the answer or the model is told (the rendered result, or why the call failed)."""
    event: ToolCalled


class ToolRunner:
    """Runs declared tools for agents: allow-list, schema validation, timeout, one `ToolCalled` per call."""

    def __init__(self, pool: ConnectionPool | None = None, timeout_s: float = 2.0, tools: Mapping[str, Tool] = TOOLS):
        self._ctx = ToolContext(pool)
        self._timeout_s = timeout_s
        self._tools = dict(tools)
        # A timed-out call keeps its thread until it returns (Python threads cannot be killed); two workers bound it.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent-tool")

    def unknown(self, cards: Mapping[str, AgentCard]) -> list[str]:
        """`agent: tool` pairs naming tools that do not exist (a start-up error)."""
        return [f"{c.name}: {t}" for c in cards.values() for t in c.tools if t not in self._tools]

    def call(
        self, card: AgentCard, name: str, raw_args: str | dict[str, Any], cause: Event, trigger: str
    ) -> ToolOutcome:
        started = time.perf_counter()
        args_seen: dict[str, Any] = {}
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            args_seen = json.loads(raw_args) if isinstance(raw_args, str) else dict(raw_args)
            if not isinstance(args_seen, dict):
                raise ValueError("tool arguments must be a JSON object")
        except (ValueError, TypeError) as exc:
            outcome, error, args_seen = "invalid_args", f"arguments are not a JSON object: {exc}", {}
        else:
            outcome = "ok"
        tool = self._tools.get(name)
        if outcome == "ok" and (tool is None or name not in card.tools):
            outcome, error = "not_allowed", f"agent {card.name!r} may not call tool {name!r}"
        parsed: BaseModel | None = None
        if outcome == "ok":
            assert tool is not None
            try:
                parsed = tool.args.model_validate(args_seen)
                args_seen = parsed.model_dump()
            except ValidationError as exc:
                outcome, error = (
                    "invalid_args",
                    "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
                )
        if outcome == "ok":
            assert tool is not None and parsed is not None
            future = self._executor.submit(tool.run, parsed, self._ctx)
            try:
                result = future.result(timeout=self._timeout_s)
            except FutureTimeout:
                outcome, error = "timeout", f"tool {name} did not finish within {self._timeout_s}s"
            except Exception as exc:
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
        event = cause.caused(
            ToolCalled,
            producer="agents",
            agent=card.name,
            tool=name,
            args=args_seen,
            result=result,
            outcome=outcome,
            error=error,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            trigger=trigger,
        )
        if outcome == "ok":
            assert tool is not None and parsed is not None and result is not None
            return ToolOutcome(name, True, tool.render(parsed, result), event)
        return ToolOutcome(name, False, f"Tool {name} failed ({outcome}): {error}", event)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
