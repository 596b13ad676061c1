"""The V-IRL navigation environment (VIRL-L and VIRL-VL): follow route instructions on real street graphs.

Rail mode (the paper): the expert's rail fixes the positions; each correct action advances one rail
point (a new ``task`` observation with the updated observation/action history), a wrong one returns a
``feedback`` observation ("You failed this trial because …"); ``verify_iter`` wrong attempts at one
point end the episode. Success is a correct ``stop()`` at the destination.

Free mode (beyond the paper): actions really move the agent on the street graph. ``forward()`` follows
the out-edge closest to the agent's heading for about one rail step (stopping at intersections, sharp
bends and the destination); ``turn_direction(x)`` sets the heading to the available edge direction
closest to x. The correct action is replanned from the current position (shortest path to the
destination); rewards compare with it. The episode ends on ``stop()`` (success within 25 m of the
destination) or when the step budget runs out (truncated).

Vision mode: the observation image is :func:`grid_2x2` of four views at headings front/right/back/left
(agent heading +0/+90/+180/+270), matching the prompt's "[front, right / back, left]" description.
The official SFTvsRL code renders heading-135/-45/+45/+135 instead (four diagonal views that together
cover 360° but none straight ahead); we follow the prompt text so "front" really is straight ahead.
In vision mode the current observation is not given as text (the model must read the grid); earlier
observations appear in the history as the text the expert reported.

Prompt style ``compact`` (:mod:`~sftrl.environments.virl.compact`): a four-line prompt (route, action
space, current observation, actions so far) and the action alone as the answer, for small models; the
same verifier and rewards, without the observation check (the answer states no observation).

Task ``read`` (vision, compact, rail; beyond the paper): a landmark-recognition probe on the same rail.
At each of the expert's points the prompt is the grid and ``now``; the answer is what it shows in
compact form (``Bon Chon Chicken F``, ``none, intersection``), judged by
:func:`~sftrl.environments.virl.verifier.verify_reading`; one attempt per point, then the next point
whatever was said. The run summary's ``recognition_accuracy`` is the share of views read right.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Final, Literal

import gymnasium as gym
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sftrl.environments.base import Observation, PromptStyle, SftrlEnv, StepResult, Verdict
from sftrl.environments.tools import ToolSpec
from sftrl.environments.virl import compact
from sftrl.environments.virl.prompts import (
    OUTPUT_BLOCK,
    OUTPUT_BLOCK_VISION,
    action_list,
    feedback_text,
    reply_text,
    task_prompt,
)
from sftrl.environments.virl.rail import (
    INTERSECTION,
    Rail,
    RailPoint,
    build_rail,
    observation_at,
    turn_action,
)
from sftrl.environments.virl.routes import RouteInfo, route_summary, split_routes
from sftrl.environments.virl.tools import TOOLS_OUTPUT, expert_tool_call, tool_specs
from sftrl.environments.virl.verifier import VIRLState, verify, verify_reading
from sftrl.street_view.city import CityMap, available_cities, load_city
from sftrl.street_view.geometry import COMPASS_NAMES, haversine_m, heading_delta
from sftrl.street_view.provider import GRID_LAYOUT, StreetViewProvider, ViewRequest, grid_2x2

Split = Literal["id", "rule-ood", "visual-ood", "nyc-unseen"]

# Per split: default city (joined with "+" for several) and default action space.
SPLITS: Final[dict[str, dict[str, str]]] = {
    "id": {"city": "nyc", "actions": "absolute"},
    "rule-ood": {"city": "nyc", "actions": "relative"},
    "visual-ood": {"city": "helsinki+baltimore", "actions": "absolute"},
    "nyc-unseen": {"city": "nyc", "actions": "absolute"},
}
SUCCESS_RADIUS_M: Final = 25.0  # free mode: stop() this close to the destination succeeds
FREE_STEP_M: Final = 20.0  # free mode: one forward() walks about this far
FREE_FORWARD_MAX_DEG: Final = 60.0  # forward() needs an out-edge this close to the heading
FREE_CONTINUE_MAX_DEG: Final = 45.0  # ... and keeps walking only through gentle bends
RELATIVE_TURN_DEG: Final[dict[str, float]] = {
    "left": -90.0,
    "right": 90.0,
    "slightly left": -45.0,
    "slightly right": 45.0,
}


class VIRLConfig(BaseModel):
    """Keyword arguments of ``sftrl/VIRL-v0`` (named like the ``agent run`` flags)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    city: str | None = Field(
        default=None,
        description="city bundle (nyc, helsinki, baltimore, singapore; join with + for several); "
        "default from the split: nyc, or helsinki+baltimore for visual-ood",
    )
    split: Split = "id"
    """id / rule-ood (relative actions) / nyc-unseen: New York; visual-ood: Helsinki + Baltimore."""
    modality: Literal["language", "vision"] = "language"
    """language: observations as text (V-IRL-L); vision: a 2x2 street-view grid (V-IRL-VL)."""
    actions: Literal["absolute", "relative"] | None = Field(
        default=None, description="action space; default from the split (relative for rule-ood)"
    )
    mode: Literal["rail", "free"] = "rail"
    """rail: the expert's positions, as the paper; free: actions really move the agent."""
    street_view: Literal["synthetic", "google", "cache", "panorama-dir"] = "synthetic"
    """Where street views come from (vision): offline renderer, live Google, disk cache, official data."""
    cache_inner: Literal["synthetic", "google", "panorama-dir"] = Field(
        default="synthetic", description="provider the cache reads through (--street-view cache)"
    )
    cache_dir: str | None = Field(
        default=None, description="street-view cache directory (default $SFTRL_CACHE_DIR or ~/.cache/sftrl)"
    )
    offline: bool = Field(default=False, description="street-view cache only: never call the inner provider")
    cache_google_imagery: bool = Field(
        default=False,
        description="allow caching Google Street View images (Google's terms restrict storing them)",
    )
    panorama_dir: str | None = Field(
        default=None, description="root of an official SFTvsRL dataset (--street-view panorama-dir)"
    )
    routes: str | None = Field(
        default=None, description="official route file (route_infos.json or one route_info)"
    )
    verify_iter: int = Field(default=2, ge=1, le=1000)
    """Wrong attempts allowed at one position before the episode ends."""
    protocol: Literal["json", "tools"] = Field(
        default="json", description="answer as the paper's JSON, or by calling action tools"
    )
    resolution: int = Field(default=320, ge=16, le=2048, description="pixels per view (the grid is 2x2)")
    max_route_m: float = Field(
        default=150.0,
        gt=0.0,
        description="longest generated route in metres (V-IRL's routes are <= ~150 m; raise for longer ones)",
    )
    max_start_m: float = Field(
        default=150.0, gt=50.0, description="farthest start place from the destination (straight line, m)"
    )
    straight_line_length: int = Field(default=5, ge=0, le=100)
    """Interpolated forward() rail points per leg (before dropping)."""
    drop_rate: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Share of the interpolated rail points dropped (seeded)."""
    route_draw: Literal["random", "by_index"] = Field(
        default="random",
        description="draw a route of the set at random per episode, or take route (episode index mod "
        "route count), so a run of N = route count episodes plays every route once, in order",
    )
    num_routes: int = Field(default=100, ge=1, le=10_000, description="routes per split")
    route_seed: int = Field(default=0, description="seed of the split's fixed route set")
    max_episode_steps: int | None = Field(default=None, ge=1, description="free mode step budget")
    task: Literal["navigate", "read"] = Field(
        default="navigate",
        description="navigate: follow the route (the paper's task); read: at each of the expert's rail "
        "points say what the street view grid shows, in compact form (landmark, where it lies, "
        "intersection), one attempt each: a landmark-recognition probe (vision, compact, rail)",
    )
    prompt_style: PromptStyle = Field(
        default="paper",
        description="paper: the paper's prompts and JSON answer; compact: four-line prompt (route, "
        "action space, observation, actions so far) and the bare action as answer, for small models "
        "(same verifier and rewards, no observation check)",
    )

    @model_validator(mode="after")
    def _resolve(self) -> VIRLConfig:
        defaults = SPLITS[self.split]
        if self.city is None:
            object.__setattr__(self, "city", defaults["city"])
        if self.actions is None:
            object.__setattr__(self, "actions", defaults["actions"])
        assert self.city is not None
        city = self.city.strip().lower()
        known = available_cities()
        for part in city.split("+"):
            if part not in known:
                raise ValueError(f"unknown city {part!r}; available: {', '.join(known)}")
        # Within NYC, the visual OOD split is map2seq's held-out "unseen" area (new streets, same city).
        if self.split == "visual-ood" and city == "nyc":
            object.__setattr__(self, "split", "nyc-unseen")
        if self.split == "nyc-unseen" and city != "nyc":
            raise ValueError("split 'nyc-unseen' exists only for city 'nyc'")
        if self.prompt_style == "compact" and self.protocol == "tools":
            raise ValueError(
                "prompt_style compact answers in text; it cannot be combined with protocol tools"
            )
        if self.task == "read" and (
            self.modality != "vision" or self.prompt_style != "compact" or self.mode != "rail"
        ):
            raise ValueError("task read needs modality vision, prompt_style compact and mode rail")
        object.__setattr__(self, "city", city)
        return self


class VIRLEnv(SftrlEnv):
    """Navigate a route by instructions; each step answers with observation, instruction and action."""

    env_id: ClassVar[str] = "sftrl/VIRL-v0"
    config_model: ClassVar[type[BaseModel]] = VIRLConfig

    def __init__(
        self, provider: StreetViewProvider | None = None, render_mode: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(render_mode)
        self.config = VIRLConfig.model_validate(kwargs)
        self._provider = provider
        self._providers: dict[str, StreetViewProvider] = {}
        self._routes: tuple[RouteInfo, ...] | None = None
        self._rail: Rail | None = None
        self._city: CityMap | None = None
        self._route_index = -1
        self._pos = 0
        self._wrong_here = 0
        self._wrong_total = 0
        self._steps = 0
        self._obs_hist: list[str] = []
        self._act_hist: list[str] = []
        self._done = True
        self._success = False
        self._final_dist: float | None = None
        # free mode state
        self._node = -1
        self._heading = 0.0
        self._leg = 0
        self._path_cache: dict[int, list[int]] = {}

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    # -- routes ----------------------------------------------------------------------------------
    @property
    def routes(self) -> tuple[RouteInfo, ...]:
        """The env's fixed route set (the split's, or the official file's)."""
        if self._routes is None:
            cfg = self.config
            assert cfg.city is not None
            if cfg.routes:
                from sftrl.environments.virl.official import load_routes

                self._routes = tuple(load_routes(cfg.routes))
            else:
                self._routes = split_routes(
                    cfg.city, cfg.split, cfg.route_seed, cfg.num_routes, cfg.max_route_m, cfg.max_start_m
                )
        return self._routes

    def check_inputs(self) -> None:
        routes = self.routes  # the routes file (--routes), or the split's route set
        if not routes:
            raise ValueError("the route set is empty")
        if self.config.modality == "vision" and self._provider is None:
            for city in {r.city or (self.config.city or "nyc").split("+")[0] for r in routes}:
                self._default_provider(city)  # builds the street-view source: opens its files now

    def _city_for(self, route: RouteInfo) -> CityMap | None:
        name = route.city or (self.config.city or "nyc").split("+")[0]
        try:
            return load_city(name)
        except LookupError:
            return None

    # -- gymnasium API ---------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        # SftrlEnv.reset is abstract (it does not seed): seed np_random through gymnasium directly.
        gym.Env.reset(self, seed=seed)
        cfg = self.config
        options = options or {}
        routes = self.routes
        if "route_index" in options:
            idx = int(options["route_index"])
            if not 0 <= idx < len(routes):
                raise ValueError(f"route_index {idx} out of range (0..{len(routes) - 1})")
        elif cfg.route_draw == "by_index" and options.get("episode_index") is not None:
            # The runner passes each episode's index (as for GP's pool_draw=by_index).
            idx = int(options["episode_index"]) % len(routes)
        else:
            idx = int(self.np_random.integers(len(routes)))
        route = routes[idx]
        self._route_index = idx
        self._city = self._city_for(route)
        assert cfg.actions is not None
        self._rail = build_rail(
            route,
            self._city,
            cfg.actions,
            cfg.straight_line_length,
            cfg.drop_rate,
            seed=int(self.np_random.integers(2**31)),
        )
        if cfg.mode == "free" and (self._rail.geocode_only or self._city is None):
            raise ValueError("free mode needs a route covered by a shipped city graph")
        self._pos = self._wrong_here = self._wrong_total = self._steps = 0
        self._obs_hist, self._act_hist = [], []
        self._done, self._success, self._final_dist = False, False, None
        self._path_cache = {}
        first = self._rail.points[0]
        self._node = first.node if first.node is not None else -1
        self._heading = first.heading
        self._leg = 0
        obs = self._task_observation()
        # The route's geometry once per episode (the TUI draws its map from the log): not per step.
        obs = obs.model_copy(update={"info": {**obs.info, "route_map": self._route_map()}})
        return self._observed(obs), dict(obs.info)

    def _route_map(self) -> dict[str, Any]:
        """Compact route geometry: street path, rail points, milestones, landmarks, instructions."""
        assert self._rail is not None
        rail, route = self._rail, self._rail.route

        def ll(lat: float, lng: float) -> list[float]:
            return [round(lat, 6), round(lng, 6)]

        path = [ll(*self._city.latlng(n)) for n in rail.path] if self._city and rail.path else []
        sentences = {s: i for i, s in enumerate(rail.instructions)}
        return {
            "path": path or [ll(p.lat, p.lng) for p in rail.points],
            "rail": [ll(p.lat, p.lng) for p in rail.points],
            "instruction_at": [sentences.get(p.instruction, -1) for p in rail.points],
            "milestones": [ll(*g) for g in route.route_results.geocode_list],
            "landmarks": [[lm.name, *ll(*lm.geocode)] for lm in route.route_results.landmark_list],
            "start": ll(*route.start_place.street_geocode),
            "dest": ll(*rail.dest),
            "instructions": list(rail.instructions),
        }

    def step(self, action: str) -> StepResult:
        if self._done or self._rail is None:
            raise RuntimeError("the episode is over: call reset() before step()")
        reply = action if isinstance(action, str) else str(action)
        if self.config.mode == "free":
            return self._step_free(reply)
        if self.config.task == "read":
            return self._step_read(reply)
        return self._step_rail(reply)

    # -- rail mode -------------------------------------------------------------------------------
    def _point(self) -> RailPoint:
        assert self._rail is not None
        return self._rail.points[self._pos]

    def _output_block(self) -> str:
        vision = self.config.modality == "vision"
        if self.config.protocol == "tools":
            where = " from the street view grid" if vision else " from the observation sequence"
            return TOOLS_OUTPUT.format(where=where)
        return OUTPUT_BLOCK_VISION if vision else OUTPUT_BLOCK

    def _judge(self, gt_action: str, at_intersection: bool, instruction: str, reply: str) -> Verdict:
        """The verifier's verdict on ``reply`` in the configured prompt style."""
        cfg = self.config
        assert cfg.actions is not None
        paper = cfg.prompt_style == "paper"
        state = VIRLState(
            gt_action,
            at_intersection,
            cfg.actions,
            instruction,
            self._output_block() if paper else compact.ANSWER_FORMAT,
            check_observation=paper,
        )
        return verify(state, reply, style=cfg.prompt_style)

    def _verdict_feedback(self, verdict: Verdict) -> Observation:
        """The feedback observation after ``verdict`` (a failed attempt, or the final correct stop)."""
        if self.config.prompt_style == "compact":
            return self._feedback(compact.feedback(verdict.category))
        return self._feedback(verdict.message if verdict.correct else feedback_text(verdict.message))

    def _step_rail(self, reply: str) -> StepResult:
        assert self._rail is not None
        cfg = self.config
        pt = self._point()
        verdict = self._judge(pt.action, pt.intersection, pt.instruction, reply)
        self._steps += 1
        terminated = False
        if verdict.correct:
            self._obs_hist.append(pt.observation)
            self._act_hist.append(pt.action)
            self._wrong_here = 0
            if pt.action == "stop()":
                self._success = terminated = True
                self._final_dist = haversine_m(pt.lat, pt.lng, *self._rail.dest)
            else:
                self._pos += 1
            obs = self._task_observation() if not terminated else self._verdict_feedback(verdict)
        else:
            self._wrong_here += 1
            self._wrong_total += 1
            terminated = self._wrong_here >= cfg.verify_iter
            if terminated:
                self._final_dist = haversine_m(pt.lat, pt.lng, *self._rail.dest)
            obs = self._verdict_feedback(verdict)
        self._done = terminated
        info = dict(obs.info)
        info.update({"verdict": verdict, "success": self._success})
        return self._observed(obs), verdict.reward, terminated, False, info

    def _step_read(self, reply: str) -> StepResult:
        """One reading, judged; then on to the expert's next rail point whatever it said (one attempt
        per point, so every checkpoint reads the same views). Success: every view of the route read right."""
        assert self._rail is not None
        pt = self._point()
        verdict = verify_reading(pt.observation, reply)
        self._steps += 1
        self._wrong_total += not verdict.correct
        self._act_hist.append(pt.action)
        terminated = pt.action == "stop()"
        if terminated:
            self._success = self._wrong_total == 0
            self._final_dist = haversine_m(pt.lat, pt.lng, *self._rail.dest)
            obs = self._feedback(f"{self._steps - self._wrong_total} of {self._steps} views read right")
        else:
            self._pos += 1
            obs = self._task_observation()
        self._done = terminated
        info = dict(obs.info)
        info.update({"verdict": verdict, "success": self._success})
        return self._observed(obs), verdict.reward, terminated, False, info

    def _feedback(self, text: str) -> Observation:
        return Observation(
            text=text,
            kind="feedback",
            env_id=self.env_id,
            info=self._info(),
            oracle=self._oracle(),
        )

    # -- observations ----------------------------------------------------------------------------
    def _current(self) -> tuple[float, float, int | None, float, str, bool, str, str]:
        """(lat, lng, node, heading, gt observation, at intersection, gt instruction, gt action)."""
        if self.config.mode == "free":
            return self._free_state()
        pt = self._point()
        return pt.lat, pt.lng, pt.node, pt.heading, pt.observation, pt.intersection, pt.instruction, pt.action

    def _task_observation(self) -> Observation:
        assert self._rail is not None
        cfg = self.config
        assert cfg.actions is not None
        lat, lng, node, heading, obs_text, _, _, _ = self._current()
        vision = cfg.modality == "vision"
        if cfg.task == "read":
            text = compact.READ_PROMPT
        elif cfg.prompt_style == "compact":
            text = compact.prompt(
                instructions=self._rail.instructions,
                actions=cfg.actions,
                observation=None if vision else obs_text,
                actions_taken=self._act_hist,
            )
        else:
            current = "the current street view grid (see the image)" if vision else obs_text
            text = task_prompt(
                modality=cfg.modality,
                instruction="\n".join(self._rail.instructions),
                actions=cfg.actions,
                observations=[*self._obs_hist, current],
                actions_taken=self._act_hist,
            )
        if cfg.protocol == "tools":
            text = text[: text.rindex("[Output]")] + self._output_block()
        images = [self._grid(lat, lng, node, heading)] if vision else []
        return Observation(
            text=text,
            images=images,
            kind="task",
            env_id=self.env_id,
            info=self._info(),
            oracle=self._oracle(),
        )

    def _grid(self, lat: float, lng: float, node: int | None, heading: float) -> Any:
        assert self._rail is not None
        city = self._rail.route.city
        # `is None`, not `or`: a passed cache is falsy while empty (len 0) and would be bypassed.
        provider = self._provider if self._provider is not None else self._default_provider(city)
        res = self.config.resolution
        route = self._rail.route
        marks = tuple((lm.name, *lm.geocode) for lm in route.route_results.landmark_list)
        marks += ((route.dest_place.name, *route.dest_place.geocode),)
        marks += ((route.start_place.name, *route.start_place.geocode),)
        views = [
            provider.get_view(
                ViewRequest(
                    lat=lat,
                    lng=lng,
                    heading=(heading + rel) % 360.0,
                    width=res,
                    height=res,
                    city=city,
                    node=node,
                    landmarks=marks,
                )
            )
            for _, rel in GRID_LAYOUT
        ]
        return grid_2x2(views)

    def _provider_kwargs(self, name: str, city: str | None) -> dict[str, Any]:
        cfg = self.config
        if name == "synthetic":
            return {"city": city or "nyc"}
        if name == "panorama-dir":
            if not cfg.panorama_dir:
                raise ValueError("--street-view panorama-dir needs --panorama-dir ROOT (an SFTvsRL dataset)")
            return {"root": cfg.panorama_dir}
        return {}

    def _default_provider(self, city: str | None) -> StreetViewProvider:
        from sftrl.street_view.provider import make_provider

        cfg = self.config
        key = f"{cfg.street_view}:{city}"
        if key not in self._providers:
            if cfg.street_view == "cache":
                kwargs: dict[str, Any] = {
                    "inner": cfg.cache_inner,
                    "offline": cfg.offline,
                    "allow_google": cfg.cache_google_imagery,
                    **self._provider_kwargs(cfg.cache_inner, city),
                }
                if cfg.cache_dir:
                    kwargs["cache_dir"] = cfg.cache_dir
                self._providers[key] = make_provider("cache", **kwargs)
            else:
                self._providers[key] = make_provider(
                    cfg.street_view, **self._provider_kwargs(cfg.street_view, city)
                )
        return self._providers[key]

    def render_image(self) -> Any:
        """The street-view grid at the agent's position (rendered on demand in language modality)."""
        if self._rail is None or self._last_observation is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        if self._last_observation.images:
            return self._last_observation.images[0]
        lat, lng, node, heading, *_ = self._current()
        return self._grid(lat, lng, node, heading)

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for process pools / distributed workers: providers this env opened hold locks,
        # sessions and SQLite handles, so they are dropped and reopened lazily on first use there.
        state = self.__dict__.copy()
        state["_providers"] = {}
        return state

    def close(self) -> None:
        """Close the street-view providers this env opened (a provider passed in stays the caller's)."""
        providers, self._providers = self._providers, {}
        for provider in providers.values():
            close = getattr(provider, "close", None)
            if close is not None:
                close()

    def _info(self) -> dict[str, Any]:
        assert self._rail is not None
        cfg = self.config
        assert cfg.actions is not None
        lat, lng, node, heading, _, inter, instr, _ = self._current()
        return {
            **route_summary(self._rail.route),
            "route_index": self._route_index,
            "split": cfg.split,
            "mode": cfg.mode,
            "modality": cfg.modality,
            "action_space": cfg.actions,
            "actions": action_list(cfg.actions),
            "prompt_style": cfg.prompt_style,
            "rail_length": len(self._rail),
            "position": self._pos,
            "step": self._steps,
            "lat": lat,
            "lng": lng,
            "node": node,
            "heading": round(heading, 1),
            "at_intersection": inter,
            "attempt": self._wrong_here,
            "remaining_attempts": cfg.verify_iter - self._wrong_here,
            "geocode_only": self._rail.geocode_only,
        }

    def _oracle(self) -> dict[str, Any]:
        if self._done:
            return {}
        _, _, _, _, obs_text, _, instr, action = self._current()
        compact_style = self.config.prompt_style == "compact"
        if self.config.task == "read":
            expert = compact.observation_text(obs_text)
        elif compact_style:
            expert = compact.reply(action)
        else:
            expert = reply_text(obs_text, instr, action)
        return {
            "expert_reply": expert,
            "expert_tool_call": expert_tool_call(obs_text, instr, action),
            "gt_action": action,
        }

    def tool_specs(self) -> list[ToolSpec]:
        assert self.config.actions is not None
        return tool_specs(self.config.actions)

    # -- free mode -------------------------------------------------------------------------------
    def _budget(self) -> int:
        assert self._rail is not None
        return self.config.max_episode_steps or 2 * len(self._rail) + 10

    def _dest_node(self) -> int:
        assert self._rail is not None
        return self._rail.path[-1]

    def _plan(self, node: int) -> list[int]:
        if node not in self._path_cache:
            assert self._city is not None
            self._path_cache[node] = self._city.shortest_path(node, self._dest_node())
        return self._path_cache[node]

    def _forward_edge(self, node: int, heading: float, max_deg: float) -> tuple[int, float] | None:
        assert self._city is not None
        best = None
        for dst, h in self._city.out_edges(node):
            d = abs(heading_delta(heading, h))
            if d <= max_deg and (best is None or d < best[0]):
                best = (d, dst, h)
        return None if best is None else (best[1], best[2])

    def _walk(self, node: int, heading: float) -> tuple[int, float]:
        """Where forward() from (node, heading) ends: ~one rail step along the closest edges."""
        assert self._city is not None
        edge = self._forward_edge(node, heading, FREE_FORWARD_MAX_DEG)
        if edge is None:
            return node, heading  # facing no street: forward() does nothing
        walked = 0.0
        dest = self._dest_node()
        while edge is not None:
            walked += self._city.distance_m(node, edge[0])
            node, heading = edge
            if walked >= FREE_STEP_M or node == dest or self._city.is_intersection(node):
                break
            edge = self._forward_edge(node, heading, FREE_CONTINUE_MAX_DEG)
        return node, heading

    def _turn(self, node: int, heading: float, x: str) -> float:
        """The heading after turn_direction(x): the out-edge direction closest to the named one."""
        assert self._city is not None
        if x in RELATIVE_TURN_DEG:
            target = heading + RELATIVE_TURN_DEG[x]
        else:
            target = COMPASS_NAMES.index(x) * 45.0
        edges = self._city.out_edges(node)
        if not edges:
            return target % 360.0
        return min(edges, key=lambda e: abs(heading_delta(target, e[1])))[1]

    def _expert_action(self, node: int, heading: float) -> str:
        assert self._city is not None and self.config.actions is not None
        if node == self._dest_node():
            return "stop()"
        path = self._plan(node)
        want = self._city.edge_heading(node, path[1])
        edge = self._forward_edge(node, heading, FREE_FORWARD_MAX_DEG)
        if edge is not None and edge[0] == path[1]:
            return "forward()"
        # Prefer the plain name of the wanted heading; else any direction whose snapped edge is it.
        first = turn_action(heading, want, self.config.actions)
        options = [first[len("turn_direction(") : -1]]
        options += [a[len("turn_direction(") : -1] for a in action_list(self.config.actions) if "turn_" in a]
        for x in options:
            if abs(heading_delta(self._turn(node, heading, x), want)) < 1e-6:
                return f"turn_direction({x})"
        # No single turn reaches it (a U-turn with relative actions): turn the closest way.
        best = min(options, key=lambda x: abs(heading_delta(self._turn(node, heading, x), want)))
        return f"turn_direction({best})"

    def _free_state(self) -> tuple[float, float, int | None, float, str, bool, str, str]:
        assert self._rail is not None and self._city is not None
        node, heading = self._node, self._heading
        lat, lng = self._city.latlng(node)
        landmarks = [(lm.name, *lm.geocode) for lm in self._rail.route.route_results.landmark_list]
        landmarks.append((self._rail.route.dest_place.name, *self._rail.route.dest_place.geocode))
        inter = self._city.is_intersection(node)
        obs = observation_at(lat, lng, heading, landmarks)
        if inter:
            obs = f"{obs}. {INTERSECTION}"
        action = self._expert_action(node, heading) if not self._done else "stop()"
        instr = self._rail.instructions
        if action == "stop()":
            sentence = instr[-1]
        else:
            k = min(self._leg, len(instr) // 2 - 1)
            sentence = instr[2 * k] if action.startswith("turn_") else instr[2 * k + 1]
        return lat, lng, node, heading, obs, inter, sentence, action

    def _step_free(self, reply: str) -> StepResult:
        assert self._rail is not None and self._city is not None and self.config.actions is not None
        _, _, _, heading, obs_text, inter, instr, gt = self._free_state()
        verdict = self._judge(gt, inter, instr, reply)
        self._steps += 1
        act = (verdict.action or {}).get("action") if verdict.category != "unparseable" else None
        terminated = truncated = False
        if act is not None:
            self._obs_hist.append(obs_text)
            self._act_hist.append(act)
            if act == "stop()":
                terminated = True
                self._final_dist = haversine_m(*self._city.latlng(self._node), *self._rail.dest)
                self._success = self._final_dist <= SUCCESS_RADIUS_M
            elif act == "forward()":
                self._node, self._heading = self._walk(self._node, self._heading)
                self._advance_leg()
            else:
                self._heading = self._turn(self._node, self._heading, act[len("turn_direction(") : -1])
        else:
            self._wrong_total += 1
        if act is not None and not verdict.correct:
            self._wrong_total += 1
        if not terminated and self._steps >= self._budget():
            truncated = True
            self._final_dist = haversine_m(*self._city.latlng(self._node), *self._rail.dest)
        self._done = terminated or truncated
        if act is None or self._done:
            obs = self._verdict_feedback(verdict)
        else:
            obs = self._task_observation()
        info = dict(obs.info)
        info.update({"verdict": verdict, "success": self._success})
        return self._observed(obs), verdict.reward, terminated, truncated, info

    def _advance_leg(self) -> None:
        assert self._rail is not None and self._city is not None
        geos = self._rail.route.route_results.geocode_list
        if self._leg < len(geos) - 1:
            lat, lng = geos[self._leg]
            if haversine_m(lat, lng, *self._city.latlng(self._node)) <= 10.0:
                self._leg += 1

    # -- metrics / random ------------------------------------------------------------------------
    def episode_metrics(self) -> dict[str, Any]:
        assert self._rail is not None
        return {
            "steps": self._steps,
            "rail_length": len(self._rail),
            "rail_position": self._pos,
            "wrong_attempts": self._wrong_total,
            "dist_to_dest_m": None if self._final_dist is None else round(self._final_dist, 1),
            "route_id": self._rail.route.route_id,
        }

    @classmethod
    def random_reply(cls, observation: Observation, rng: random.Random) -> str:
        """A well-formed reply with a random action from ``observation.info["actions"]``."""
        actions = list(observation.info.get("actions") or action_list("absolute"))
        action = rng.choice(actions)
        if observation.info.get("prompt_style") == "compact":
            return compact.reply(action)
        return reply_text("No landmarks nearby", "", action)
