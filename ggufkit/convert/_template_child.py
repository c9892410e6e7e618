"""The child process that compiles and renders chat templates under limits (no ggufkit imports).

Started by :mod:`ggufkit.convert.template_sandbox` with the memory cap in bytes as its argument.
It caps its own address space where the OS has RLIMIT_AS, then answers one JSON request per line
on stdin with one JSON line on stdout: ``{"op": "compile"|"render", "template", "context",
"max_output"}`` -> ``{"ok": true, "text"}`` or ``{"ok": false, "kind", "message"}``. The parent
enforces the deadline (and, where no rlimit exists, the memory cap) by killing this process.
Its Jinja environment is llama-cpp-python's and Transformers': sandboxed and immutable, with
``trim_blocks``, ``lstrip_blocks``, loop controls, ``{% generation %}`` passed through, and their
``tojson``; ``raise_exception`` and ``strftime_now`` are defined.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any


def _cap_memory(limit: int) -> None:
    try:
        import resource
    except ImportError:  # Windows: the parent watches this process's memory instead
        return
    if sys.platform == "darwin":  # RLIMIT_AS is not enforced there: the parent watches
        return
    with_limit = getattr(resource, "RLIMIT_AS", None)
    if with_limit is None:
        return
    try:
        _, hard = resource.getrlimit(with_limit)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(with_limit, (limit, hard))
    except (ValueError, OSError):
        pass


def _environment(max_output: int) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGenerationTags(jinja2.ext.Extension):
        tags = {"generation"}  # noqa: RUF012 (jinja2's own attribute)

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    class Limited(ImmutableSandboxedEnvironment):
        # Intercepted: never folded into a constant when compiling, checked when rendering.
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    sequence = isinstance(seq, str | bytes | list | tuple)
                    if sequence and isinstance(times, int) and len(seq) * times > max_output:
                        raise SecurityError(
                            f"a repetition of {len(seq)} items x {times} is over the "
                            f"output limit ({max_output} characters)"
                        )
            if operator == "**" and isinstance(right, int) and abs(right) > 4096:
                raise SecurityError(f"an exponent of {right} is over the limit (4096)")
            return super().call_binop(context, operator, left, right)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = Limited(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    return env


def _raise_exception(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def main() -> None:
    _cap_memory(int(sys.argv[1]))
    from jinja2 import TemplateSyntaxError

    compiled: dict[tuple[str, int], Any] = {}
    environments: dict[int, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        max_output = int(request.get("max_output", 1 << 24))
        try:
            env = environments.get(max_output) or environments.setdefault(
                max_output, _environment(max_output)
            )
            key = (request["template"], max_output)
            template = compiled.get(key)
            if template is None:
                template = compiled[key] = env.from_string(request["template"])
            if request["op"] == "compile":
                answer: dict[str, Any] = {"ok": True, "text": ""}
            else:
                context = dict(request.get("context") or {})
                context.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
                pieces, size = [], 0
                for piece in template.generate(**context):
                    size += len(piece)
                    if size > max_output:
                        raise OverflowError(
                            f"the output passed the limit of {max_output} characters"
                        )
                    pieces.append(piece)
                answer = {"ok": True, "text": "".join(pieces)}
        except TemplateSyntaxError as exc:
            answer = {"ok": False, "kind": "syntax", "message": f"line {exc.lineno}: {exc.message}"}
        except MemoryError:
            answer = {"ok": False, "kind": "memory", "message": "out of memory"}
        except OverflowError as exc:
            answer = {"ok": False, "kind": "output", "message": str(exc)}
        except RecursionError:
            answer = {"ok": False, "kind": "error", "message": "recursion too deep"}
        except Exception as exc:  # the template's own error (raise_exception, SecurityError)
            kind = "security" if type(exc).__name__ == "SecurityError" else "error"
            answer = {"ok": False, "kind": kind, "message": f"{type(exc).__name__}: {exc}"}
        try:
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        except MemoryError:
            sys.stdout.write('{"ok": false, "kind": "memory", "message": "out of memory"}\n')
            sys.stdout.flush()
        if not answer["ok"] and answer["kind"] == "memory":
            return  # the parent starts a fresh child


if __name__ == "__main__":
    main()
