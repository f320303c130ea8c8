"""The users' experts and projects, from their PostgreSQL, kept current without ever waiting on it.

A ``Registry`` starts on built-in defaults (one generalist expert, no projects) and loads the two
tables in the background, each load with its deadline (``VICTORIA_STARTUP_EXPERTS_TIMEOUT``,
``VICTORIA_STARTUP_REGISTRY_TIMEOUT``), then again every ``VICTORIA_REGISTRY_REFRESH`` seconds, so
that what other tools add or change there is used within seconds. A database that is down, or that
accepts connections and never answers, delays nothing: the last data loaded (or the defaults) stays
in use, the change is logged once, and the loads go on. Choosing an expert and finding a project
are pure lookups in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from victoria.errors import VictoriaError

if TYPE_CHECKING:  # asyncpg is loaded only where a database is configured
    import asyncpg

log = logging.getLogger(__name__)

_WORD: Final = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
PREFIX: Final = 5  # letters two words must share to match ("проект" and "проекта", "deploy" and "deployment")
CATEGORY_WORDS: Final[dict[str, tuple[str, ...]]] = {
    # What each of the classifier's routes is about, in the words an expert's role may use.
    "files": (
        "files",
        "filesystem",
        "repository",
        "developer",
        "engineer",
        "файлы",
        "разработчик",
        "инженер",
    ),
    "capabilities": ("assistant", "support", "guide", "ассистент", "поддержка"),
    "plan": ("planner", "planning", "architect", "manager", "планирование", "архитектор", "менеджер"),
    "agent": (),
}


@dataclass(frozen=True, slots=True)
class Expert:
    name: str
    role: str = ""
    department: str = ""
    system_prompt: str = ""


@dataclass(frozen=True, slots=True)
class Project:
    slug: str
    name: str = ""
    description: str = ""
    workspace_path: str | None = None
    is_active: bool = True


DEFAULT_EXPERT: Final = Expert(name="Victoria", role="generalist")
"""The expert of every task when no expert of the users' matches it (and while none are loaded)."""


class UnknownProject(VictoriaError):
    def __init__(self, slug: str, known: list[str], *, inactive: bool = False) -> None:
        what = "is not active" if inactive else "is not a known project"
        super().__init__(f"project {slug!r} {what}; known projects: {', '.join(known) or 'none'}")
        self.slug = slug
        self.known = known


def _words(text: str) -> set[str]:
    return {w.lower()[:PREFIX] for w in _WORD.findall(text)}


def choose_expert(experts: list[Expert], goal: str, category: str) -> Expert:
    """The expert whose role, department and name share the most words with the goal and with the
    task's category (the classifier's route); the default generalist when none shares any. No
    model call; the same goal and experts give the same choice."""
    wanted = _words(goal)
    topic = _words(" ".join(CATEGORY_WORDS.get(category, ())))
    best, best_score = DEFAULT_EXPERT, 0
    for expert in sorted(experts, key=lambda e: e.name):
        own = _words(f"{expert.role} {expert.department} {expert.name}")
        score = 2 * len(own & wanted) + len(own & topic)
        if score > best_score:
            best, best_score = expert, score
    return best


def project_slug(project_context: Any) -> str | None:
    """The project a task's ``project_context`` names: a string (the slug), or an object with
    ``slug`` (or ``project``, ``project_slug``); None when it names none."""
    if isinstance(project_context, str):
        return project_context.strip() or None
    if isinstance(project_context, dict):
        for key in ("slug", "project", "project_slug"):
            value = project_context.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


class Registry:
    """Experts and projects as last loaded; ``loaded`` says whether they came from the database."""

    def __init__(
        self,
        pool: asyncpg.Pool | None,
        *,
        experts_timeout: float,
        projects_timeout: float,
        refresh: float,
    ) -> None:
        self.pool = pool
        self.experts_timeout = experts_timeout
        self.projects_timeout = projects_timeout
        self.refresh = refresh
        self.experts: list[Expert] = []
        self.projects: dict[str, Project] = {}
        self.loaded = False
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()

    def start(self) -> None:
        if self.pool is not None and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="registry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_first_load(self, timeout: float) -> bool:
        """For tests and tools: wait (at most ``timeout``) until one load has been tried."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), timeout)
        return self.loaded

    async def _loop(self) -> None:
        while True:
            try:
                experts = await asyncio.wait_for(self._load_experts(), self.experts_timeout)
                projects = await asyncio.wait_for(self._load_projects(), self.projects_timeout)
            except Exception as exc:  # down, silent, no table yet: the last data stays in use
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if self.error is None:
                    using = "the experts and projects loaded before" if self.loaded else "built-in defaults"
                    log.warning(
                        "experts and projects not loaded from PostgreSQL (%s); using %s", error, using
                    )
                self.error = error
            else:
                if self.error is not None or not self.loaded:
                    log.info(
                        "experts and projects loaded from PostgreSQL: %d and %d", len(experts), len(projects)
                    )
                self.experts, self.projects, self.loaded, self.error = experts, projects, True, None
            self._first.set()
            await asyncio.sleep(self.refresh)

    async def _load_experts(self) -> list[Expert]:
        assert self.pool is not None
        rows = await self.pool.fetch(
            "SELECT name, role, department, system_prompt FROM experts ORDER BY name"
        )
        return [
            Expert(
                name=row["name"],
                role=row["role"] or "",
                department=row["department"] or "",
                system_prompt=row["system_prompt"] or "",
            )
            for row in rows
        ]

    async def _load_projects(self) -> dict[str, Project]:
        assert self.pool is not None
        rows = await self.pool.fetch(
            "SELECT slug, name, description, workspace_path, is_active FROM projects ORDER BY slug"
        )
        return {
            row["slug"]: Project(
                slug=row["slug"],
                name=row["name"] or "",
                description=row["description"] or "",
                workspace_path=row["workspace_path"],
                is_active=row["is_active"] is not False,
            )
            for row in rows
        }

    def expert_for(self, goal: str, category: str) -> Expert:
        return choose_expert(self.experts, goal, category)

    def project(self, project_context: Any) -> Project | None:
        """The project ``project_context`` names, or None when it names none or the projects are
        not loaded (then it is only recorded); ``UnknownProject`` for one that is not there or not
        active."""
        slug = project_slug(project_context)
        if slug is None or not self.loaded:
            return None
        found = self.projects.get(slug)
        known = sorted(s for s, p in self.projects.items() if p.is_active)
        if found is None:
            raise UnknownProject(slug, known)
        if not found.is_active:
            raise UnknownProject(slug, known, inactive=True)
        return found
