"""Template rendering in Jinja2's sandbox, in a worker process with a time and memory limit.

Templates come from users, so they render in `SandboxedEnvironment` (no attribute access to
Python internals) with `StrictUndefined` (a misspelt variable is an error, not a blank). The
sandbox alone does not stop a template from raising (`{{ 1/0 }}`), running away (nested loops)
or eating the machine's memory (`{{ 'x' * 10**10 }}`), so rendering happens in a small worker
process (`Renderer`) that the parent talks to over a pipe, one item (the parts of one message)
at a time:

* the parent waits at most `RenderLimits.seconds` per item, then kills the worker (a new one
  starts for the next item) and that item fails with "template took longer than N s";
* the worker runs under `RLIMIT_AS`, so a memory blow-up is a `MemoryError` there, never in the
  parent, and that item fails with "template needs too much memory";
* output is counted while it is generated and stops at `RenderLimits.output_bytes`;
* cheap guards in the sandbox (`*`, `**`, `%`, `+`, padding and `replace`) refuse the common
  abuses before they allocate anything, with a precise message.

Compile-time work on a template is evaluation too (Jinja2 folds constant expressions while it
compiles: `{{ 'x' * 2**31 }}` is computed then), so checking a template (`check_syntax`) and
finding the variables it needs (`template_variables`) also happen in the worker, under the same
limits, never in the calling process (a CLI, a Dagster run).

Whatever goes wrong while rendering one item is a `TemplateRenderError` naming where (step and
part); it ends only that item. Campaign launch renders every step against its contacts first,
so a template that cannot render is normally rejected then, not halfway through a send.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import re
import signal
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from jinja2 import StrictUndefined, Template, Undefined, meta, nodes
from jinja2.filters import do_center, do_indent
from jinja2.sandbox import SandboxedEnvironment

from engine.text import shown

#: Contact fields every template may use; unmapped CSV columns come in as `attributes`.
CONTACT_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "full_name",
    "company",
    "job_title",
    "phone",
    "website",
    "city",
    "country",
    "timezone",
)

KIB = 1024
MIB = 1024 * KIB


class TemplateRenderError(ValueError):
    """A template failed for one item; the message names the step and part and why."""


class RendererError(RuntimeError):
    """The renderer itself could not run (no worker process): not the template's fault."""


@dataclass(frozen=True)
class RenderLimits:
    """How much one item (the parts of one message) may cost to render.

    `memory_bytes` is what the worker may allocate on top of what it uses before rendering
    anything (the interpreter, Jinja2 and whatever the parent's main module imports).
    """

    seconds: float = 2.0
    output_bytes: int = 256 * KIB
    memory_bytes: int = 512 * MIB
    #: Compiled templates the worker keeps, by source.
    cache_size: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.seconds <= 600:
            raise ValueError(f"render seconds must be in (0, 600], not {self.seconds}")
        if not KIB <= self.output_bytes <= 64 * MIB:
            raise ValueError(f"render output_bytes must be 1 KiB..64 MiB, not {self.output_bytes}")
        if not 32 * MIB <= self.memory_bytes <= 64 * 1024 * MIB:
            raise ValueError(f"render memory_bytes must be 32 MiB..64 GiB, not {self.memory_bytes}")
        if self.cache_size < 1:
            raise ValueError("render cache_size must be >= 1")


def _size(n: int) -> str:
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    if n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n:,} bytes"


def _seconds(s: float) -> str:
    return f"{s:g} s"


def variable_name(key: str) -> str:
    """A CSV header as a template variable: "Favourite Penguin" → favourite_penguin."""
    return re.sub(r"\W+", "_", key.strip().lower()).strip("_")


class Blank(Undefined):
    """A contact field this contact has no value for.

    It prints as nothing and is false, so `{{ first_name }}` is blank, but it is undefined to
    `default`, so `{{ first_name | default('there') }}` says "there". Using it as a value
    (`first_name.upper()`, `first_name + 1`) is still an error that names the field.
    """

    __slots__ = ()


def contact_context(contact: Mapping[str, Any]) -> dict[str, Any]:
    """The variables a template sees for one contact: its attributes, then its fields.

    A field that is NULL or empty is `Blank` rather than "", so a template's `default` applies.
    """
    attributes = dict(contact.get("attributes") or {})
    context: dict[str, Any] = {variable_name(k): v for k, v in attributes.items()}
    context["attributes"] = attributes
    for field in CONTACT_FIELDS:
        value = contact.get(field)
        context[field] = Blank(name=field) if value is None or value == "" else value
    return context


# -- the sandbox ------------------------------------------------------------------------------


class _Refused(Exception):
    """A guard refused an operation before it allocated anything."""


#: Integers bigger than this are refused: Python will not print one over 4,300 digits anyway.
_MAX_INT_BITS = 16 * 1024
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


class _LimitedSandbox(SandboxedEnvironment):
    """The sandbox plus guards that refuse the cheap ways to build a huge value.

    They are a fast, precise first line; the worker's memory limit and the parent's timeout
    stop whatever gets past them (`~` concatenation, `format`, loops).
    """

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, max_length: int) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.max_length = max_length
        self.filters["center"] = self._center
        self.filters["indent"] = self._indent
        self.filters["replace"] = self._replace_filter
        self.filters["format"] = self._format_filter

    def _check_length(self, n: int, what: str = "a string") -> None:
        if n > self.max_length:
            raise _Refused(
                f"template would build {what} of {n:,} characters (limit {self.max_length:,})"
            )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            self._check_power(left, right)
        elif operator == "*":
            self._check_repeat(left, right)
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                self._check_length(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right)
        return super().call_binop(context, operator, left, right)

    def _check_bits(self, bits: int) -> None:
        if bits > _MAX_INT_BITS:
            raise _Refused(
                f"template would compute a number of about {bits:,} bits (limit {_MAX_INT_BITS:,})"
            )

    def _check_power(self, base: Any, exponent: Any) -> None:
        if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
            self._check_bits(max(abs(base).bit_length() - 1, 0) * exponent if abs(base) > 1 else 0)

    def _check_repeat(self, left: Any, right: Any) -> None:
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int):
                what = "a string" if isinstance(seq, str) else "a list"
                self._check_length(len(seq) * times, what)
        if isinstance(left, int) and isinstance(right, int):
            self._check_bits(left.bit_length() + right.bit_length())

    def _check_percent(self, text: str, args: Any) -> None:
        values = args if isinstance(args, tuple) else (args,)
        for match in _PERCENT_SPEC.finditer(text):
            for number in match.groups():
                if number == "*":
                    widest = max((v for v in values if isinstance(v, int)), default=0)
                    self._check_length(widest + len(text))
                elif number is not None:
                    self._check_length(int(number) + len(text))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
                __self._check_length(max(args[0], len(owner)))
            elif name == "expandtabs":
                width = args[0] if args and isinstance(args[0], int) else 8
                __self._check_length(len(owner) + owner.count("\t") * max(width, 0))
            elif name == "replace" and len(args) >= 2:
                __self._check_replace(owner, *args[:3])
        return super().call(__context, __obj, *args, **kwargs)

    def _check_replace(self, text: Any, old: Any, new: Any, count: Any = -1) -> None:
        if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
            found = text.count(old) if old else len(text) + 1
            if isinstance(count, int) and count >= 0:
                found = min(found, count)
            self._check_length(len(text) + found * max(len(new) - len(old), 0))

    def _center(self, value: Any, width: int = 80) -> str:
        if isinstance(width, int):
            self._check_length(max(width, len(str(value))))
        return do_center(value, width)

    def _indent(
        self, s: Any, width: int | str = 4, first: bool = False, blank: bool = False
    ) -> str:
        if isinstance(width, int):
            text = str(s)
            self._check_length(len(text) + (text.count("\n") + 1) * width)
        return do_indent(s, width, first, blank)

    def _replace_filter(self, s: Any, old: Any, new: Any, count: int | None = None) -> str:
        text = str(s)
        self._check_replace(text, str(old), str(new), -1 if count is None else count)
        return text.replace(str(old), str(new), -1 if count is None else count)

    def _format_filter(self, value: Any, *args: Any, **kwargs: Any) -> str:
        text = str(value)
        self._check_percent(text, args)
        return text % (kwargs or args)


# -- the worker -------------------------------------------------------------------------------

#: Requests to the worker: ("render", sources, context) or ("analyze", source); None ends it.
_RENDER = "render"
_ANALYZE = "analyze"
#: Answers from the worker: ("ok", texts or names) or ("error", part index, message, fatal).
_OK = "ok"
_ERROR = "error"


def _limit_memory(allowance: int) -> None:
    """Cap the worker's address space at what it uses now plus `allowance`."""
    try:
        import resource

        import psutil
    except ImportError:  # not a POSIX system: only the time limit applies
        return
    limit = psutil.Process().memory_info().vms + allowance
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _render_part(template: Template, context: dict, limit: int) -> str:
    chunks: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise _Refused(f"template output is over the limit of {_size(limit)}")
        chunks.append(chunk)
    return "".join(chunks)


def _render_item(
    env: _LimitedSandbox,
    cache: OrderedDict[str, Template],
    limits: RenderLimits,
    progress: Any,
    sources: list[str | None],
    context: dict,
) -> tuple:
    texts: list[str | None] = []
    for index, source in enumerate(sources):
        progress.value = index
        if source is None:
            texts.append(None)
            continue
        try:
            template = cache.get(source)
            if template is None:
                template = env.from_string(source)
                cache[source] = template
                if len(cache) > limits.cache_size:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(source)
            texts.append(_render_part(template, context, limits.output_bytes))
        except MemoryError:
            return (_ERROR, index, _memory_message(limits), True)
        except _Refused as exc:
            return (_ERROR, index, str(exc), False)
        except RecursionError:
            return (_ERROR, index, "template nests or recurses too deeply", False)
        except Exception as exc:  # anything a template can raise: it ends this item only
            # The message may quote the template's own values: one bounded, printable line.
            return (_ERROR, index, shown(f"{exc.__class__.__name__}: {exc}", 300), False)
    return (_OK, texts)


#: A variable guarded by one of these needs no value: `{{ x | default('') }}`,
#: `{% if x is defined %}`.
_DEFAULT_FILTERS = frozenset({"default", "d"})
_DEFINED_TESTS = frozenset({"defined", "undefined"})


def _needed_variables(ast: nodes.Template) -> set[str]:
    """The variables a parsed template needs from its context without a fallback (see
    `template_variables`). Finding the undeclared ones compiles the template."""
    undeclared = meta.find_undeclared_variables(ast)
    unguarded: set[str] = set()
    tested: set[str] = set()
    todo: list[tuple[nodes.Node, bool]] = [(ast, False)]
    while todo:
        node, guarded = todo.pop()
        if isinstance(node, nodes.Name) and node.ctx == "load" and not guarded:
            unguarded.add(node.name)
        protects = (isinstance(node, nodes.Filter) and node.name in _DEFAULT_FILTERS) or (
            isinstance(node, nodes.Test) and node.name in _DEFINED_TESTS
        )
        if protects and isinstance(node, nodes.Test) and isinstance(node.node, nodes.Name):
            tested.add(node.node.name)
        for child in node.iter_child_nodes():
            todo.append((child, protects and child is getattr(node, "node", None)))
    return (unguarded & undeclared) - tested


def _analyze_item(env: _LimitedSandbox, limits: RenderLimits, source: str) -> tuple:
    """Parse and compile `source` (constant folding included) and find the variables it
    needs: ("ok", names) or an error answer, as for an item."""
    try:
        return (_OK, sorted(_needed_variables(env.parse(source))))
    except MemoryError:
        return (_ERROR, 0, _memory_message(limits), True)
    except RecursionError:
        return (_ERROR, 0, "template nests or recurses too deeply", False)
    except Exception as exc:  # a syntax error, an unknown filter: ends this template only
        text = next(iter(str(exc).splitlines()), "")  # not the "<introspection>" location
        return (_ERROR, 0, shown(f"{exc.__class__.__name__}: {text}", 300), False)


def _memory_message(limits: RenderLimits) -> str:
    return f"template needs too much memory (over {_size(limits.memory_bytes)})"


def _worker_main(conn: Connection, limits: RenderLimits, progress: Any) -> None:
    """The worker's loop: one request (an item to render or a template to analyze) → one
    answer.

    It needs no secrets, so it drops the environment it inherited before running any template.
    SIGTERM is made fatal again: a parent that ignores it (a test runner's worker does) passes
    that on, and multiprocessing's exit handler would then wait forever for a worker it
    terminated.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.clear()
    _limit_memory(limits.memory_bytes)
    env = _LimitedSandbox(max_length=limits.output_bytes)
    cache: OrderedDict[str, Template] = OrderedDict()
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if request is None:
            return
        try:
            if request[0] == _ANALYZE:
                progress.value = 0
                answer = _analyze_item(env, limits, request[1])
            else:
                answer = _render_item(env, cache, limits, progress, *request[1:])
        except MemoryError:  # while keeping the cache or building the answer
            answer = (_ERROR, progress.value, _memory_message(limits), True)
        try:
            conn.send(answer)
        except MemoryError:
            conn.send((_ERROR, progress.value, _memory_message(limits), True))
        if answer[0] == _ERROR and answer[3]:
            return  # after a MemoryError the worker is not trusted: the parent starts another


def _context() -> multiprocessing.context.BaseContext:
    # forkserver forks from a small server process (cheap restarts, no copy of a parent's
    # threads or connections); spawn where it does not exist.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


#: Worker start-up (importing Jinja2) is not charged to any template.
_STARTUP_SECONDS = 60.0


class Renderer:
    """Renders items in one worker process, reused across items; use it as a context manager.

    ```
    with Renderer(limits) as renderer:
        texts = renderer.render({"subject": s, "body_text": t}, context, where="step 1")
    ```
    The worker starts on the first item (a run with nothing to render costs no process) and
    again after an item that timed out or ran out of memory; `close` always ends it.
    """

    def __init__(self, limits: RenderLimits | None = None) -> None:
        self.limits = limits or RenderLimits()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._progress: Any = None
        self.started = 0  # worker processes started so far (for tests and logs)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def worker_pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _start(self) -> Connection:
        ctx = _context()
        parent, child = ctx.Pipe()
        self._progress = ctx.Value("i", 0, lock=False)
        process = ctx.Process(
            target=_worker_main,
            args=(child, self.limits, self._progress),
            name="penguin-template-renderer",
            daemon=True,
        )
        try:
            process.start()
        except OSError as exc:
            raise RendererError(f"cannot start the template renderer: {exc}") from exc
        finally:
            child.close()
        self._process, self._conn = process, parent
        self.started += 1
        try:
            ready = parent.poll(_STARTUP_SECONDS) and parent.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = process.exitcode
            self.close()
            raise RendererError(f"the template renderer did not start (exit code {code})")
        return parent

    def close(self) -> None:
        """End the worker: ask it to stop, then kill it if it does not."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            conn.close()
        if process is not None:
            process.join(timeout=1)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
            process.close()

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.kill()
        self.close()

    def render(
        self,
        parts: Mapping[str, str | None],
        context: Mapping[str, Any],
        *,
        where: str = "template",
    ) -> dict[str, str | None]:
        """Render the parts of one item (e.g. subject, body_text, body_html) for `context`.

        A part whose source is None stays None. Raises `TemplateRenderError` naming
        "`where` `part`" for anything the template causes, `RendererError` if no worker runs.
        """
        names = list(parts)
        sources = [parts[name] for name in names]
        texts = self._ask((_RENDER, sources, dict(context)), where, names)
        return dict(zip(names, texts, strict=True))

    def analyze(self, source: str, *, where: str = "template") -> set[str]:
        """Parse and compile `source` in the worker, under the limits, and return the
        variables it needs (`template_variables`); `TemplateRenderError` naming `where` for a
        template that cannot compile or runs over a limit while compiling."""
        return set(self._ask((_ANALYZE, source), where, None))

    def _ask(self, request: tuple, where: str, names: list[str] | None) -> list:
        """Send `request`, wait at most the time limit for the answer; its result, or
        `TemplateRenderError` naming `where` (and the part among `names`)."""

        def at(index: int) -> str:
            return where if names is None else f"{where} {names[min(index, len(names) - 1)]}"

        conn = self._conn or self._start()
        try:
            conn.send(request)
        except (OSError, ValueError) as exc:  # the worker is gone; the next item gets another
            self._kill()
            raise RendererError(f"the template renderer stopped: {exc}") from exc
        except Exception as exc:  # the context cannot be pickled
            raise TemplateRenderError(f"{where}: its data cannot be rendered: {exc}") from exc
        if not conn.poll(self.limits.seconds):
            index = self._progress.value if self._progress is not None else 0
            self._kill()
            raise TemplateRenderError(
                f"{at(index)}: template took longer than {_seconds(self.limits.seconds)}"
            )
        try:
            answer = conn.recv()
        except (EOFError, OSError):
            # Killed from outside (the kernel's OOM killer, a signal): blame the item, since
            # the worker was idle before it, and start a new one for the next.
            index = self._progress.value if self._progress is not None else 0
            code = self._process.exitcode if self._process is not None else None
            self._kill()
            raise TemplateRenderError(
                f"{at(index)}: the template stopped the renderer (exit code {code}); it may "
                "need too much memory"
            ) from None
        if answer[0] == _OK:
            return answer[1]
        _, index, message, fatal = answer
        if fatal:
            self._kill()
        raise TemplateRenderError(f"{at(index)}: {message}")


# -- checking templates without rendering them ------------------------------------------------

#: The limits of checking a template for callers that bring no renderer.
ANALYSIS_LIMITS = RenderLimits()
#: The renderer that checks templates for callers that bring none: one per process (a forked
#: child starts its own), used by one thread at a time; its worker dies with the process.
_analyzer: tuple[int, Renderer] | None = None
_analyzer_lock = threading.Lock()


def _close_analyzer() -> None:
    """At exit, before multiprocessing's own handler joins its children (atexit runs the
    later registration first): the worker ends on its closed connection."""
    if _analyzer is not None and _analyzer[0] == os.getpid():
        _analyzer[1].close()


def _analyze(source: str, where: str, renderer: Renderer | None) -> set[str]:
    global _analyzer
    if renderer is not None:
        return renderer.analyze(source, where=where)
    with _analyzer_lock:
        if _analyzer is None or _analyzer[0] != os.getpid():
            if _analyzer is None:
                atexit.register(_close_analyzer)
            _analyzer = (os.getpid(), Renderer(ANALYSIS_LIMITS))
        elif _analyzer[1].limits != ANALYSIS_LIMITS:  # changed (by a test): a new worker
            _analyzer[1].close()
            _analyzer = (os.getpid(), Renderer(ANALYSIS_LIMITS))
        return _analyzer[1].analyze(source, where=where)


def check_syntax(source: str, *, where: str = "template", renderer: Renderer | None = None) -> None:
    """Check that `source` parses and compiles, without rendering it: for templates that have
    no contacts to render against yet. It runs in `renderer`'s worker (a shared one by
    default), under its limits; `TemplateRenderError` names `where` and what is wrong."""
    _analyze(source, where, renderer)


def template_variables(
    source: str, *, where: str = "template", renderer: Renderer | None = None
) -> set[str]:
    """The variables a template needs from its context without a fallback: every name it reads
    that it does not set itself, except where it is guarded by `| default(...)` or tested with
    `is defined` (then a contact without it is fine). Found in `renderer`'s worker (a shared
    one by default), under its limits, like `check_syntax`."""
    return _analyze(source, where, renderer)
