"""SQLAlchemy ORM integration: URL attributes on mapped classes, invalidation after commit.

Everything here is switched on by :meth:`SignedURLs.install` and off by ``uninstall``; nothing
happens at import time.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.engine import ChunkedIteratorResult, Result, Row
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, UserDefinedOption, registry

from ._keys import Shape, URLSpec
from .exceptions import ConfigurationError
from .types import ObjectKey

__all__ = [
    "INFO_KEY",
    "Installation",
    "Invalidate",
    "Prefetch",
    "PrefetchURLs",
    "Read",
    "URLAttribute",
]

#: How a URL attribute reads its value: ``read(obj, spec)`` (``SignedURLs``' read path).
Read = Callable[[Any, URLSpec], "str | None"]
#: What runs after the outermost commit: ``invalidate({cls: keys})``.
Invalidate = Callable[[Mapping[type, Iterable[str]]], int]
#: How a statement's loaded objects get their URLs: ``prefetch(objects, option)``.
Prefetch = Callable[[list[Any], "PrefetchURLs"], None]

log = logging.getLogger("sqla_signed_urls")

#: ``session.info`` key under which keys waiting for the commit are kept.
INFO_KEY = "sqla_signed_urls"


class URLAttribute:
    """The read-only ``obj.url`` attribute that ``install()`` puts on a mapped class.

    >>> File.url.spec.column
    'object_key'
    """

    __slots__ = ("read", "spec")

    def __init__(self, read: Read, spec: URLSpec) -> None:
        self.read = read
        self.spec = spec

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return self.read(obj, self.spec)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(
            f"{self.spec.cls.__name__}.{self.spec.attr} is read-only; "
            f"set {self.spec.column} (the object key) instead"
        )


class PrefetchURLs(UserDefinedOption):
    """The query option :meth:`SignedURLs.prefetch` makes: once the statement has loaded its
    rows, the URLs of every loaded instance of an installed class (its own entities and what
    its eager loaders loaded) are read in one round trip, so each ``obj.url`` after it is an
    in-process hit::

        posts = session.scalars(
            select(Post).options(selectinload(Post.images), urls.prefetch())
        ).all()
    """

    __slots__ = ("attrs", "batch_size", "owner")

    def __init__(self, owner: object, attrs: tuple[str, ...], batch_size: int) -> None:
        super().__init__((owner, attrs, batch_size))
        self.owner = owner
        self.attrs = attrs
        self.batch_size = batch_size

    def __repr__(self) -> str:
        names = ", ".join(repr(a) for a in self.attrs)
        return f"PrefetchURLs({names}, batch_size={self.batch_size})"


def _matcher(target: Any) -> Callable[[Mapper[Any]], bool]:
    if isinstance(target, registry):
        return lambda mapper: mapper.registry is target
    if isinstance(target, type) and (
        isinstance(getattr(target, "registry", None), registry) or hasattr(target, "__mapper__")
    ):
        return lambda mapper: issubclass(mapper.class_, target)
    raise ConfigurationError(
        f"install({target!r}): expected a declarative base, a registry or a mapped class"
    )


def _existing_mappers(target: Any) -> list[Mapper[Any]]:
    reg = target if isinstance(target, registry) else getattr(target, "registry", None)
    if not isinstance(reg, registry):
        mapper = getattr(target, "__mapper__", None)
        reg = mapper.registry if mapper is not None else None
    return list(reg.mappers) if reg is not None else []


class Installation:
    """The targets one ``SignedURLs`` covers, their URL specs and its event listeners.

    ``read`` serves the URL attributes, ``invalidate`` runs after the outermost commit with the
    keys the transaction changed; ``owner`` keeps each ``SignedURLs``' pending keys apart in
    ``session.info``::

        Installation(key_prefix="file_url:", read=urls._url, invalidate=urls.invalidate_keys,
                     owner=urls).add(Base)
    """

    def __init__(
        self,
        *,
        key_prefix: str,
        read: Read,
        invalidate: Invalidate,
        owner: object,
        prefetch: Prefetch | None = None,
    ):
        self.key_prefix = key_prefix
        self.read = read
        self.invalidate = invalidate
        self.owner = owner
        self.prefetch = prefetch
        #: The option applied to every ORM ``SELECT`` (``install(..., prefetch=True)``).
        self.prefetch_all: PrefetchURLs | None = None
        self.targets: list[tuple[Any, Callable[[Mapper[Any]], bool]]] = []
        #: mapped class -> url attribute name -> spec
        self.specs: dict[type, dict[str, URLSpec]] = {}
        self._listening = False
        self._loading: list[Mapper[Any]] = []
        # The instances of installed classes loaded while a prefetching statement produces
        # its rows (``None`` outside one): a load event appends to it.
        self._collecting: ContextVar[list[Any] | None] = ContextVar(
            f"sqla_signed_urls.prefetch.{id(self)}", default=None
        )

    # -- targets ----------------------------------------------------------------------------

    def add(self, target: Any) -> None:
        if any(t is target for t, _ in self.targets):
            raise ConfigurationError(f"install({_name(target)}): already installed")
        matches = _matcher(target)
        self.targets.append((target, matches))
        if not self._listening:
            self._listen()
        try:
            for mapper in _existing_mappers(target):
                if matches(mapper):
                    self._add_mapper(mapper)
            self.check_collisions()
        except Exception:
            self.remove(target)
            raise

    def remove(self, target: Any) -> None:
        keep = [(t, m) for t, m in self.targets if target is not None and t is not target]
        self.targets = keep
        for cls, specs in list(self.specs.items()):
            mapper: Mapper[Any] = inspect(cls)
            if any(m(mapper) for _, m in keep):
                continue
            self._stop_collecting(mapper)
            for attr, spec in specs.items():
                if isinstance(cls.__dict__.get(attr), URLAttribute):
                    delattr(cls, attr)
                del spec
            del self.specs[cls]
        if not self.targets:
            self.prefetch_all = None
            if self._listening:
                self._unlisten()

    def _covers(self, mapper: Mapper[Any]) -> bool:
        return any(m(mapper) for _, m in self.targets)

    def _add_mapper(self, mapper: Mapper[Any]) -> None:
        cls = mapper.class_
        if cls in self.specs:
            return
        specs: dict[str, URLSpec] = {}
        pk_attrs = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        owner = mapper.base_mapper.class_
        prefix = self.key_prefix
        # mapper.columns, unlike mapper.attrs, does not configure mappers: collisions are
        # checked when they configure, with every class of the batch known.
        for column in mapper.columns:
            kind = column.type
            if not isinstance(kind, ObjectKey):
                continue
            prop = mapper.get_property_by_column(column)
            attr = kind.url_attr
            if attr in specs:
                raise ConfigurationError(
                    f"{cls.__name__}: ObjectKey columns {specs[attr].column!r} and {prop.key!r} "
                    f"both use url_attr={attr!r}; give one ObjectKey(url_attr=...) of its own"
                )
            existing = getattr(cls, attr, None)
            if existing is not None and not isinstance(existing, URLAttribute):
                raise ConfigurationError(
                    f"{cls.__name__}.{attr} already exists; name the URL attribute of "
                    f"{prop.key!r} with ObjectKey(url_attr=...)"
                )
            namespace = kind.key_namespace
            watch = tuple(
                source
                for source in (kind.download_name, kind.content_type)
                if isinstance(source, str)
            )
            shape = None
            if kind.download_name is not None or kind.content_type is not None:
                shape = Shape(
                    name_source=kind.download_name,
                    type_source=kind.content_type,
                    disposition=kind.disposition,
                )
            base: dict[str, Any] = {
                "cls": cls,
                "column": prop.key,
                "column_names": frozenset({prop.key, column.key, column.name, *watch}),
                "pk_attrs": pk_attrs,
                "prefix": f"{prefix}{namespace}:" if namespace else prefix,
                "owner": owner,
            }
            specs[attr] = URLSpec(attr=attr, shape=shape, watch=watch, **base)
            for name, variant in kind.variants:
                variant_attr = variant.attr or f"{name}_url"
                if variant_attr in specs:
                    raise ConfigurationError(
                        f"{cls.__name__}: the variant {name!r} of {prop.key!r} would be "
                        f"{variant_attr!r}, which another URL attribute uses; give it "
                        "Variant(..., attr=...)"
                    )
                variant_shape = Shape(key_map=variant.key, params=variant.params)
                specs[variant_attr] = URLSpec(
                    attr=variant_attr, variant=name, shape=variant_shape, **base
                )
        for attr in specs:
            existing = getattr(cls, attr, None)
            if existing is not None and not isinstance(existing, URLAttribute):
                raise ConfigurationError(
                    f"{cls.__name__}.{attr} already exists; name the URL attribute with "
                    "ObjectKey(url_attr=...) or Variant(attr=...)"
                )
        if not specs:
            return
        for attr, spec in specs.items():
            setattr(cls, attr, URLAttribute(self.read, spec))
        self.specs[cls] = specs
        for name in ("load", "refresh"):
            event.listen(mapper, name, self._on_load)
        self._loading.append(mapper)

    def _stop_collecting(self, mapper: Mapper[Any]) -> None:
        if mapper in self._loading:
            self._loading.remove(mapper)
            for name in ("load", "refresh"):
                if event.contains(mapper, name, self._on_load):
                    event.remove(mapper, name, self._on_load)

    def _on_load(self, target: Any, *args: Any) -> None:
        found = self._collecting.get()
        if found is not None:
            found.append(target)

    def check_collisions(self) -> None:
        """Two classes (not related by inheritance) must not share one key scheme."""
        seen: dict[str, URLSpec] = {}
        ordered = sorted(self.specs.items(), key=lambda item: item[0].__qualname__)
        for _, specs in ordered:
            for spec in specs.values():
                other = seen.setdefault(spec.prefix, spec)
                if other.owner is not spec.owner:
                    raise ConfigurationError(
                        f"{other.cls.__name__}.{other.attr} and {spec.cls.__name__}.{spec.attr} "
                        f"would both cache under '{spec.prefix}<pk>'; give one of them "
                        "ObjectKey(..., namespace='...') or its own SignedURLs(key_prefix=...)"
                    )

    # -- listeners --------------------------------------------------------------------------

    def _events(self) -> list[tuple[Any, str, Callable[..., Any]]]:
        return [
            (Mapper, "after_mapper_constructed", self._on_mapper),
            (Mapper, "before_configured", self.check_collisions),
            (Session, "after_flush", self._after_flush),
            (Session, "do_orm_execute", self._do_orm_execute),
            (Session, "after_commit", self._after_commit),
            (Session, "after_transaction_end", self._after_transaction_end),
        ]

    def _listen(self) -> None:
        for target, name, fn in self._events():
            event.listen(target, name, fn)
        self._listening = True

    def _unlisten(self) -> None:
        for target, name, fn in self._events():
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self._listening = False

    def _on_mapper(self, mapper: Mapper[Any], cls: type) -> None:
        if self._covers(mapper):
            self._add_mapper(mapper)

    # -- collecting what a transaction changed ----------------------------------------------

    def _pending(self, session: Session) -> dict[type, set[str]]:
        bucket: dict[Any, dict[type, set[str]]] = session.info.setdefault(INFO_KEY, {})
        return bucket.setdefault(self.owner, {})

    def _after_flush(self, session: Session, flush_context: Any) -> None:
        found: dict[type, set[str]] = {}
        for obj in session.dirty:
            specs = self.specs.get(type(obj))
            if specs:
                self._changed_keys(obj, specs.values(), found)
        for obj in session.deleted:
            specs = self.specs.get(type(obj))
            if specs:
                for spec in specs.values():
                    self._old_key(obj, spec, found)
        if found:
            pending = self._pending(session)
            for cls, keys in found.items():
                pending.setdefault(cls, set()).update(keys)

    def _changed_keys(
        self, obj: Any, specs: Iterable[URLSpec], found: dict[type, set[str]]
    ) -> None:
        state = inspect(obj)
        for spec in specs:
            changed = state.attrs[spec.column].history.has_changes() or any(
                state.attrs[name].history.has_changes() for name in (*spec.pk_attrs, *spec.watch)
            )
            if changed:
                self._old_key(obj, spec, found)

    @staticmethod
    def _old_key(obj: Any, spec: URLSpec, found: dict[type, set[str]]) -> None:
        identity = inspect(obj).identity
        key = spec.key_for_pk(identity) if identity is not None else spec.key_for(obj)
        if key is not None:
            found.setdefault(spec.cls, set()).add(key)

    def _do_orm_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        if state.is_select:
            return self._prefetching(state)
        if not (state.is_update or state.is_delete):
            return None
        mapper = state.bind_mapper
        if mapper is None or mapper.class_ not in self.specs:
            return None
        specs = list(self.specs[mapper.class_].values())
        statement: Any = state.statement
        params: Any = state.parameters
        multi = isinstance(params, list)
        if state.is_update:
            touched = _touched_columns(statement, params)
            watched = set().union(*(s.column_names for s in specs)) | set(specs[0].pk_attrs)
            if touched is not None and not (touched & watched):
                return None
        pending = self._pending(state.session)
        keys = pending.setdefault(mapper.class_, set())
        if isinstance(params, list) and state.is_update:
            pk_attrs = specs[0].pk_attrs
            for row in params:  # ORM bulk UPDATE by primary key
                pk = [row.get(name) for name in pk_attrs]
                if all(v is not None for v in pk):
                    keys.update(spec.key_for_pk(pk) for spec in specs)
            return None
        pk_columns = list(mapper.primary_key)
        query = select(*pk_columns).select_from(mapper.local_table)
        if statement.whereclause is not None:
            query = query.where(statement.whereclause)
        rows = state.session.execute(query, None if multi else params).all()
        for row in rows:
            keys.update(spec.key_for_pk(tuple(row)) for spec in specs)
        return None

    # -- prefetching what a SELECT loads ------------------------------------------------------

    def _option(self, state: ORMExecuteState) -> PrefetchURLs | None:
        """The prefetch option that applies to this statement, if any."""
        if state.is_column_load or state.is_relationship_load:
            return None  # refreshing attributes, lazy loads: never prefetched
        chosen = state.execution_options.get("prefetch_urls")
        if chosen is False:
            return None
        for option in state.user_defined_options:
            if isinstance(option, PrefetchURLs) and option.owner is self.owner:
                return option
        return self.prefetch_all

    def _prefetching(self, state: ORMExecuteState) -> Result[Any] | None:
        option = self._option(state)
        if option is None or self.prefetch is None or _columns_only(state.statement):
            return None
        found: list[Any] = []
        token = self._collecting.set(found)
        try:
            result = state.invoke_statement()
        finally:
            self._collecting.reset(token)
        if not isinstance(result, ChunkedIteratorResult):
            # A result made elsewhere (a cache's frozen rows): read it all now.
            frozen = result.freeze()
            self._fetch(found, frozen.data, option)
            return frozen()
        if state.execution_options.get("prebuffer_rows"):
            # Every row is loaded already (AsyncSession does this); chunks(None) re-reads
            # them without consuming the result.
            self._fetch(found, list(itertools.chain.from_iterable(result.chunks(None))), option)
            return result
        produce = result.chunks

        def chunks(size: int | None) -> Iterator[Sequence[Any]]:
            """The ORM's chunks, each followed by one prefetch of what it loaded (its rows,
            their eager loads): one batch per ``yield_per`` partition when streaming."""
            produced = produce(size)
            while True:
                loaded: list[Any] = []
                token = self._collecting.set(loaded)
                try:
                    rows = next(produced, None)
                finally:
                    self._collecting.reset(token)
                if rows is None:
                    return
                self._fetch(loaded, rows, option)
                yield rows

        result.chunks = chunks
        # The partition size a yield_per already set (the ORM's iterator was built with it).
        partition = getattr(result, "_yield_per", None)
        result.iterator = itertools.chain.from_iterable(chunks(partition))
        return result

    def _fetch(self, loaded: list[Any], rows: Sequence[Any], option: PrefetchURLs) -> None:
        """Prefetch the installed instances among ``rows`` and the ``loaded`` ones."""
        specs = self.specs
        found = {id(obj): obj for obj in loaded}
        for row in rows:
            for item in row if isinstance(row, (tuple, Row)) else (row,):
                if type(item) in specs:
                    found.setdefault(id(item), item)
        if found and self.prefetch is not None:
            self.prefetch(list(found.values()), option)

    def _after_commit(self, session: Session) -> None:
        if session.in_nested_transaction():
            return
        bucket = session.info.get(INFO_KEY)
        pending = bucket.pop(self.owner, None) if bucket else None
        if not pending:
            return
        try:
            self.invalidate(pending)
        except Exception:  # never break the app's commit
            log.exception("could not invalidate cached URLs after commit")

    def _after_transaction_end(self, session: Session, transaction: Any) -> None:
        if transaction.parent is None:
            bucket = session.info.get(INFO_KEY)
            if bucket:
                bucket.pop(self.owner, None)


def _columns_only(statement: Any) -> bool:
    """True for a ``SELECT`` of plain columns (``select(User.id)``): it loads no instance, so
    there is nothing to prefetch and its rows are left alone. Anything else (an entity, an
    alias, a textual statement) may load instances."""
    columns = getattr(statement, "_raw_columns", None)
    if not columns:
        return False
    return not any(getattr(c, "_is_from_clause", True) for c in columns)


def _touched_columns(statement: Any, params: Any) -> set[str] | None:
    """Names of the columns an UPDATE sets, or ``None`` when that cannot be told."""
    names: set[str] = set()
    if isinstance(params, list):
        for row in params:
            names.update(row)
        return names
    values = getattr(statement, "_values", None) or {}
    ordered = getattr(statement, "_ordered_values", None) or []
    items = list(values) + [k for k, _ in ordered]
    if not items:
        return None if not isinstance(params, dict) or not params else set(params)
    for item in items:
        names.add(getattr(item, "key", None) or str(item))
    return names


def _name(target: Any) -> str:
    return getattr(target, "__name__", None) or repr(target)
