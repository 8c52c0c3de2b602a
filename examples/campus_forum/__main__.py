"""``python -m examples.campus_forum prepare``: get the database ready before the workers start.

::

    python -m examples.campus_forum prepare                  # migrate to the latest schema
    python -m examples.campus_forum prepare --demo-data      # ... and load the demo forum
    python -m examples.campus_forum prepare --demo-data 500  # ... with 500 posts

It reads the same environment as the apps (``DATABASE_URL``, ``INSTANCE_PATH``,
``UPLOAD_DIR``, ``FILES_SECRET``, ``OSS_*``, ``DEMO_POSTS``), takes the same lock, and loads
demo data only into a forum without users. Start the workers afterwards with
``AUTO_MIGRATE=0 LOAD_DEMO_DATA=0``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy import create_engine

from . import common


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.campus_forum",
        description="Commands of the Campus Forum example.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare",
        help="migrate the database to the latest schema (and load demo data when asked)",
        description="Migrate the database to the latest schema; with --demo-data, fill a "
        "forum that has no users with demo data. Safe to run while apps start.",
    )
    prepare.add_argument(
        "--demo-data",
        metavar="POSTS",
        nargs="?",
        type=int,
        const=-1,
        help="load demo data into an empty forum: POSTS posts (default: DEMO_POSTS, or 24)",
    )
    args = parser.parse_args(argv)

    settings = common.settings()
    if args.demo_data is not None and args.demo_data < -1:
        parser.error("--demo-data: expected 0 or more posts")
    demo_posts = None
    if args.demo_data is not None:
        demo_posts = settings["DEMO_POSTS"] if args.demo_data == -1 else args.demo_data
    instance = common.instance_path(settings)
    _, storage = common.signer_and_storage(settings, instance)
    engine = create_engine(common.sync_database_url(common.database_url(settings, instance)))
    try:
        with engine.connect() as connection:
            prepared = common.prepare_database(connection, storage, demo_posts=demo_posts)
    finally:
        engine.dispose()
    print(f"database ready: schema at the latest revision ({engine.url.get_backend_name()})")
    if prepared.demo_loaded:
        print(f"demo data loaded: {demo_posts} posts")
    elif demo_posts is not None:
        print("demo data not loaded: the forum already has users")
    return 0


if __name__ == "__main__":
    sys.exit(main())
