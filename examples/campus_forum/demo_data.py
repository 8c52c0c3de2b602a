"""Demo data for a fresh database: a handful of students, their posts, images and attachments."""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy.orm import Session

from .images import gradient_png, identicon_png
from .models import File, Post, User
from .storage import Storage

__all__ = ["DEMO_POSTS", "load_demo_data"]

#: Posts in the demo forum unless asked otherwise (``DEMO_POSTS``).
DEMO_POSTS = 24

USERS = [
    ("lin.wei", "Lin Wei"),
    ("amelia", "Amelia Hart"),
    ("chen.yu", "陈宇"),
    ("kofi", "Kofi Mensah"),
    ("sofia.r", "Sofía Ramírez"),
    ("noah", "Noah Fischer"),
    ("priya", "Priya Nair"),
    ("yuki", "Yuki Tanaka"),
]

TITLES = [
    "Lost umbrella near the library",
    "Study group for Linear Algebra (Tue 7pm)",
    "Sunset from the engineering building",
    "Selling a barely used calculator",
    "Cafeteria menu this week",
    "Photos from the robotics club demo",
    "Anyone else locked out of the lab?",
    "Notes from the guest lecture on databases",
    "Campus run: 5 km route map",
    "The new bike racks are up",
    "Looking for a roommate next semester",
    "Board game night recap",
    "Exam timetable is out",
    "Cherry blossoms by the lake",
    "Free books outside room 204",
    "Hackathon team forming",
    "Printer on floor 3 fixed",
    "Orchestra rehearsal photos",
    "Library opening hours over the holidays",
    "Weekend hike: who's in?",
    "Chemistry lab safety checklist",
    "Best quiet study spots",
    "Volunteer day at the community garden",
    "Graduation photo spots ranked",
]

BODIES = [
    "Posting here in case it helps someone. Details in the pictures.",
    "Bring your own questions; we'll go through last year's problem sets.",
    "Couldn't resist taking a few pictures on the way home.",
    "Ask me anything below, I'll check the thread tonight.",
    "Attached the document with everything you need to know.",
]

ATTACHMENTS = [
    "syllabus.txt",
    "课程笔记 week 3.txt",
    "timetable 2025+spring.csv",
    "notes #4 (draft).md",
    "checklist 100%.txt",
]

PALETTE = [
    ((255, 179, 71), (214, 69, 65)),
    ((120, 200, 250), (30, 60, 140)),
    ((190, 240, 170), (30, 120, 70)),
    ((250, 210, 230), (150, 60, 130)),
    ((255, 240, 180), (200, 140, 40)),
    ((200, 200, 210), (60, 60, 80)),
]


def load_demo_data(
    session: Session, storage: Storage, *, posts: int = DEMO_POSTS, variant: int = 42
) -> None:
    """Fill an empty database with users, avatars, posts, images and attachments, and store
    every file's contents in ``storage``. ``variant`` drives the random choices: the same
    variant gives the same forum."""
    rng = random.Random(variant)
    now = dt.datetime.now(dt.timezone.utc)
    users = [User(username=u, display_name=name) for u, name in USERS]
    session.add_all(users)
    session.flush()
    for user in users:
        data = identicon_png(user.id * 7919 + variant)
        key = f"avatars/{user.id}/{rng.getrandbits(48):012x}.png"
        storage.put(key, data, "image/png")
        session.add(_file(key, "avatar", "avatar.png", "image/png", data, user))
    for i in range(posts):
        author = users[rng.randrange(len(users))]
        created = now - dt.timedelta(hours=(posts - i) * 5 + rng.randint(0, 4))
        post = Post(
            author=author,
            title=TITLES[i % len(TITLES)],
            body=BODIES[rng.randrange(len(BODIES))],
            created_at=created,
        )
        session.add(post)
        session.flush()
        for n in range(rng.choice((0, 1, 1, 2, 2, 3))):
            top, bottom = PALETTE[rng.randrange(len(PALETTE))]
            width, height = rng.choice(((160, 120), (120, 160), (200, 120)))
            data = gradient_png(width, height, top, bottom, stripes=rng.randint(0, 6))
            key = f"posts/{post.id}/image-{n + 1}-{rng.getrandbits(32):08x}.png"
            storage.put(key, data, "image/png")
            session.add(
                _file(key, "post_image", f"photo-{n + 1}.png", "image/png", data, author, post)
            )
        if rng.random() < 0.4:
            name = ATTACHMENTS[rng.randrange(len(ATTACHMENTS))]
            data = f"{post.title}\n\nShared by {author.display_name}.\n".encode()
            key = f"attachments/{post.id}/{name}"
            content_type = "text/csv" if name.endswith(".csv") else "text/plain"
            storage.put(key, data, content_type)
            session.add(_file(key, "attachment", name, content_type, data, author, post))
    session.commit()


def _file(
    key: str,
    file_type: str,
    filename: str,
    content_type: str,
    data: bytes,
    owner: User,
    post: Post | None = None,
) -> File:
    return File(
        object_key=key,
        file_type=file_type,
        filename=filename,
        content_type=content_type,
        size=len(data),
        owner=owner,
        post=post,
    )
