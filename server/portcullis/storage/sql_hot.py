"""Hot-path statements run through the DBAPI driver directly.

The statements of the token paths (rotate a refresh family, consume a code, start a family,
read a family, read the deny list) are written once in SQLAlchemy Core in ``sql_storage`` and
built once. Executing a Core statement still costs, on every call, a cache-key walk of the
statement, parameter coercion and result-metadata construction: about as much CPU as the
database work itself for these one-row statements. A :class:`CompiledStatement` compiles one
of them once for a dialect and keeps what the driver needs: the SQL text, the parameter order
with SQLAlchemy's own bind processors (JSON serialised exactly as SQLAlchemy would), and the
result columns with their result processors. Rows written or read this way are therefore the
same as through SQLAlchemy, and the SQL has one source: PostgreSQL runs the same compiled text
and parameters on psycopg's ``AsyncConnection`` when the statement is awaited on the event loop
(``postgres.PostgresStorage._hot_async``), and on the thread pool's connection otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

_PER_CALL = object()  # a parameter whose value each call supplies


class CompiledStatement:
    """One Core statement (a Select, or an Insert/Update with or without RETURNING) compiled
    for ``dialect``; :meth:`parameters` and :meth:`row` convert at the driver boundary.

    ``typed_results``: the driver already returns the Python types SQLAlchemy would (psycopg
    decodes jsonb, bytea and float8 itself, and SQLAlchemy's psycopg result processors need
    the column's type OID, known only after the query), so rows are taken as they come."""

    __slots__ = ("binds", "columns", "positional", "sql", "stmt")

    def __init__(
        self, stmt: sa.Executable, dialect: sa.Dialect, *, typed_results: bool = False
    ) -> None:
        compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.stmt = stmt  # callers cache by id(stmt): keep it alive
        self.sql: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        names = (
            list(compiled.positiontup or ())
            if self.positional
            else list(dict.fromkeys(compiled.bind_names.values()))  # as rendered in the SQL
        )
        # (name, processor, literal): a literal in the statement (``used_at = 0``) is an
        # anonymous parameter whose value the statement carries; the rest come per call.
        self.binds = tuple(
            (
                name,
                bind.type.dialect_impl(dialect).bind_processor(dialect),
                _PER_CALL if bind.required or bind.callable else bind.effective_value,
            )
            for name in names
            for bind in (compiled.binds[name],)
        )
        descriptions: list[dict[str, Any]]
        if isinstance(stmt, sa.UpdateBase):
            descriptions = stmt.returning_column_descriptions
        elif isinstance(stmt, sa.Select):
            descriptions = stmt.column_descriptions
        else:
            raise TypeError(f"not a hot-path statement: {type(stmt).__name__}")
        self.columns = tuple(
            (
                d["name"],
                None
                if typed_results
                else d["type"].dialect_impl(dialect).result_processor(dialect, None),
            )
            for d in descriptions
        )

    def parameters(self, params: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The driver's parameters: a tuple in order (qmark) or a dict (named styles)."""
        values = [
            params[name] if literal is _PER_CALL else literal for name, _, literal in self.binds
        ]
        processed = [
            value if process is None else process(value)
            for (_, process, _), value in zip(self.binds, values, strict=True)
        ]
        if self.positional:
            return tuple(processed)
        return {name: value for (name, _, _), value in zip(self.binds, processed, strict=True)}

    def row(self, found: Sequence[Sequence[Any]]) -> Mapping[str, Any] | None:
        """The first of the driver's rows as a mapping of column names, or None."""
        if not found or not self.columns:
            return None
        return {
            name: value if process is None else process(value)
            for (name, process), value in zip(self.columns, found[0], strict=True)
        }


class StatementCache:
    """Compiled statements of one storage (one dialect), by statement identity: the hot
    statements are module-level or ``functools`` cached, so each is compiled once."""

    def __init__(self, dialect: sa.Dialect, *, typed_results: bool = False) -> None:
        self._dialect = dialect
        self._typed_results = typed_results
        self._compiled: dict[int, CompiledStatement] = {}

    def get(self, stmt: sa.Executable) -> CompiledStatement:
        compiled = self._compiled.get(id(stmt))
        if compiled is None:  # two threads may both compile it once: harmless
            compiled = self._compiled[id(stmt)] = CompiledStatement(
                stmt, self._dialect, typed_results=self._typed_results
            )
        return compiled
