"""``urls.prefetch()``: the query option that reads the URLs of everything a statement loaded in
one round trip, on a sync ``Session`` (SQLite, or PostgreSQL with ``DATABASE_URL``) and the
conftest Redis (fakeredis, or ``REDIS_URL``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, String, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
    subqueryload,
)

from sqla_signed_urls import ConfigurationError, ObjectKey, SignedURLs
from sqla_signed_urls.testing import CountingRedis, FakeSigner

from ..conftest import wait_until


class PBase(DeclarativeBase):
    pass


class Author(PBase):
    __tablename__ = "pf_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    avatar: Mapped[Avatar | None] = relationship(back_populates="author", uselist=False)
    posts: Mapped[list[Post]] = relationship(back_populates="author")


class Avatar(PBase):
    __tablename__ = "pf_avatars"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("pf_authors.id"))
    object_key: Mapped[str | None] = mapped_column(ObjectKey(200, namespace="avatar"))
    author: Mapped[Author] = relationship(back_populates="avatar")


class Post(PBase):
    __tablename__ = "pf_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("pf_authors.id"))
    author: Mapped[Author] = relationship(back_populates="posts")
    images: Mapped[list[Image]] = relationship(order_by=lambda: Image.id)


class Image(PBase):
    __tablename__ = "pf_images"
    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("pf_posts.id"))
    object_key: Mapped[str | None] = mapped_column(ObjectKey(200))
    thumb_key: Mapped[str | None] = mapped_column(ObjectKey(200, url_attr="thumb_url"))


class KeyCounting(CountingRedis):
    """Counts round trips and remembers how many keys each ``MGET`` asked for."""

    def __init__(self, client: Any) -> None:
        super().__init__(client, this_thread_only=True)
        self.mget_sizes: list[int] = []

    def reset(self) -> None:
        super().reset()
        self.mget_sizes.clear()

    def mget(self, keys: Any, *args: Any) -> Any:
        self._count("mget")
        self.mget_sizes.append(len(keys))
        return self._client.mget(keys, *args)


AUTHORS = 5
POSTS = 20


@pytest.fixture
def forum(engine: Engine) -> Iterator[sessionmaker[Session]]:
    PBase.metadata.create_all(engine)
    with Session(engine) as session:
        for a in range(1, AUTHORS + 1):
            session.add(Author(id=a, name=f"a{a}", avatar=Avatar(object_key=f"avatars/{a}.png")))
        for p in range(1, POSTS + 1):
            images = [
                Image(object_key=f"posts/{p}/{i}.png", thumb_key=f"thumbs/{p}/{i}.png")
                for i in range(p % 4)  # 0-3 images
            ]
            session.add(Post(id=p, author_id=(p % AUTHORS) + 1, images=images))
        session.commit()
    yield sessionmaker(engine, expire_on_commit=False)
    PBase.metadata.drop_all(engine)


@pytest.fixture
def counting(redis_client: Any) -> KeyCounting:
    return KeyCounting(redis_client)


@pytest.fixture
def make(make_urls: Any, counting: KeyCounting) -> Any:
    def build(**options: Any) -> SignedURLs:
        prefetch = options.pop("prefetch", False)
        urls: SignedURLs = make_urls(redis=counting, **options)
        urls.install(PBase, prefetch=prefetch)
        urls.channel.ensure_started()  # the in-process layer serves once it listens
        wait_until(lambda: urls.channel.live, "the invalidation listener")
        return urls

    return build


def page_statement(urls: SignedURLs | None = None) -> Any:
    stmt = select(Post).options(
        selectinload(Post.author).selectinload(Author.avatar), selectinload(Post.images)
    )
    return stmt.options(urls.prefetch()) if urls is not None else stmt.order_by(Post.id)


def read_page(posts: list[Post]) -> list[str | None]:
    found: list[str | None] = []
    for post in posts:
        assert post.author.avatar is not None
        found.append(post.author.avatar.url)
        found.extend(image.url for image in post.images)
    return found


def page_files(posts: list[Post]) -> list[Any]:
    found: dict[tuple[type, int], Any] = {}
    for post in posts:
        if post.author.avatar is not None:
            found[Avatar, post.author.avatar.id] = post.author.avatar
        found.update(((Image, i.id), i) for i in post.images)
    return list(found.values())


def test_a_page_is_one_mget_and_every_url_after_it_an_in_process_hit(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting
) -> None:
    urls = make()
    with forum() as session:
        counting.reset()
        posts = list(session.scalars(page_statement(urls)))
        files = page_files(posts)
        assert counting.commands == {"MGET": 1, "PIPELINE": 1}  # read all, write the signed
        assert counting.mget_sizes == [len(files)] == [AUTHORS + sum(p % 4 for p in range(21))]

        counting.reset()
        first = read_page(posts)
        assert counting.round_trips == 0

    urls.clear_local()
    with forum() as session:
        counting.reset()
        posts = list(session.scalars(page_statement(urls)))
        assert counting.commands == {"MGET": 1}  # Redis warm: nothing to sign or write
        counting.reset()
        assert read_page(posts) == first
        assert counting.round_trips == 0, dict(counting.commands)
    assert all(url and url.startswith("https://files.test/") for url in first)


@pytest.mark.parametrize(
    "loader",
    [
        lambda: [joinedload(Post.author).joinedload(Author.avatar), joinedload(Post.images)],
        lambda: [subqueryload(Post.author).subqueryload(Author.avatar), subqueryload(Post.images)],
        lambda: [joinedload(Post.author).selectinload(Author.avatar), selectinload(Post.images)],
    ],
    ids=["joinedload", "subqueryload", "mixed"],
)
def test_every_eager_loader_kind_is_covered(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting, loader: Any
) -> None:
    urls = make()
    with forum() as session:
        counting.reset()
        stmt = select(Post).options(*loader(), urls.prefetch())
        posts = list(session.scalars(stmt).unique())
        assert counting.commands["MGET"] == 1
        assert counting.mget_sizes == [len(page_files(posts))]
        counting.reset()
        read_page(posts)
        assert counting.round_trips == 0


def test_objects_in_the_in_process_layer_are_not_asked_for(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting
) -> None:
    urls = make()
    with forum() as session:
        avatars = list(session.scalars(select(Avatar)))
        urls.resolve(avatars)  # every avatar is in the in-process layer now
    with forum() as session:
        counting.reset()
        posts = list(session.scalars(page_statement(urls)))
        assert counting.mget_sizes == [len(page_files(posts)) - AUTHORS]


def test_without_the_option_each_file_is_one_get(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting
) -> None:
    make()
    with forum() as session:
        posts = list(session.scalars(page_statement()))
        counting.reset()
        read_page(posts)
        assert counting.commands["GET"] == len(page_files(posts))
        assert counting.commands["MGET"] == 0


def test_installed_for_every_select_and_off_for_one_statement(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting
) -> None:
    urls = make(prefetch=True)
    with forum() as session:
        counting.reset()
        posts = list(session.scalars(page_statement()))
        assert counting.commands["MGET"] == 1
        counting.reset()
        read_page(posts)
        assert counting.round_trips == 0

    urls.clear_local()
    with forum() as session:
        counting.reset()
        stmt = page_statement().execution_options(prefetch_urls=False)
        posts = list(session.scalars(stmt))
        assert counting.round_trips == 0
        read_page(posts)
        assert counting.commands["GET"] == len(page_files(posts))

    with forum() as session:
        counting.reset()
        session.scalars(select(Author.id)).all()  # no installed class loaded: nothing to do
        session.execute(select(Author)).all()
        assert counting.round_trips == 0


def test_lazy_loads_made_later_are_not_prefetched(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting
) -> None:
    make(prefetch=True)
    with forum() as session:
        counting.reset()
        post = session.scalars(select(Post).where(Post.id == 3)).one()  # no eager loaders
        assert counting.round_trips == 0  # a Post has no URL
        images = post.images  # lazy load after the statement
        assert len(images) == 3
        assert counting.round_trips == 0
        [image.url for image in images]
        assert counting.commands["GET"] == 3


def test_large_statements_read_in_batches(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting
) -> None:
    urls = make()
    with forum() as session:
        total = len(session.scalars(select(Image)).all())
        session.expunge_all()
        counting.reset()
        images = session.scalars(select(Image).options(urls.prefetch(batch_size=7))).all()
        assert counting.mget_sizes == [7] * (total // 7) + ([total % 7] if total % 7 else [])
        counting.reset()
        [image.url for image in images]
        assert counting.round_trips == 0


def test_streamed_results_prefetch_each_partition_as_it_arrives(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting
) -> None:
    urls = make()
    with forum() as session:
        counting.reset()
        stmt = select(Image).order_by(Image.id).options(urls.prefetch())
        result = session.scalars(stmt.execution_options(yield_per=4))
        first = result.fetchmany(4)
        assert counting.mget_sizes == [4]  # only the first partition so far
        [image.url for image in first]
        rest = result.all()
        total = 4 + len(rest)
        assert counting.mget_sizes == [4] * (total // 4) + ([total % 4] if total % 4 else [])
        counting.reset()
        [image.url for image in rest]
        assert counting.round_trips == 0


def test_several_url_attributes_in_one_round_trip(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting, key_prefix: str
) -> None:
    urls = make()
    with forum() as session:
        counting.reset()
        stmt = select(Image).options(urls.prefetch("url", "thumb_url"))
        images = session.scalars(stmt).all()
        assert counting.commands["MGET"] == 1
        assert counting.mget_sizes == [2 * len(images)]
        counting.reset()
        pairs = [(image.url, image.thumb_url) for image in images]
        assert counting.round_trips == 0
        assert all(u and t and "/thumbs/" in t and "/posts/" in u for u, t in pairs)
        assert urls.cache_key(images[0], "thumb_url") == f"{key_prefix}thumb_url:{images[0].id}"


def test_redis_down_the_query_still_answers(
    make: Any, forum: sessionmaker[Session], counting: KeyCounting, monkeypatch: Any
) -> None:
    make(prefetch=True)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        import redis

        raise redis.ConnectionError("refused")

    monkeypatch.setattr(counting._client, "mget", refuse)
    with forum() as session:
        posts = list(session.scalars(page_statement()))
        assert len(posts) == POSTS
        urls_read = read_page(posts)
        assert all(url and url.startswith("https://files.test/") for url in urls_read)


def test_an_error_inside_prefetch_never_reaches_the_query(
    make: Any,
    forum: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    urls = make(prefetch=True)

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(urls, "_prefetch", broken)
    with forum() as session, caplog.at_level(logging.WARNING, logger="sqla_signed_urls"):
        posts = list(session.scalars(page_statement()))
    assert len(posts) == POSTS
    assert "Could not prefetch signed URLs (RuntimeError)" in caplog.text


def test_bad_options_are_refused(make: Any) -> None:
    urls = make()
    with pytest.raises(ConfigurationError, match="batch_size=0"):
        urls.prefetch(batch_size=0)
    with pytest.raises(ConfigurationError, match="prefetch\\(3\\)"):
        urls.prefetch(3)  # type: ignore[arg-type]
    other = SignedURLs(FakeSigner(), redis=urls.redis, key_prefix="other:")
    try:
        with pytest.raises(ConfigurationError, match="another SignedURLs"):
            other.install(PBase, prefetch=urls.prefetch())
    finally:
        other.uninstall()
        other.close()
