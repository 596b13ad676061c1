"""Load official V-IRL / SFTvsRL route files into :class:`RouteInfo` objects and build rails from them.

Two layouts are accepted: SFTvsRL's ``route_infos.json`` (``[[route_info, …], n]``) and a single V-IRL
``route_info`` object (e.g. ``route_infos_ny_moma.json``); a plain list of route_infos works too.

Rails snap the route's geocodes to the nearest street nodes of a shipped city graph and walk the
graph's shortest path between them. When a geocode lies further than 30 m from every node (the city
graph does not cover the route, e.g. V-IRL's San Francisco example against our NYC graph), the rail
is *geocode-only*: it walks straight lines between the geocodes, nodes are None, observations come from
the route's own landmark list, and vision views are requested by coordinates. Free mode needs a graph
and raises a clear ValueError for such routes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sftrl.environments.virl.rail import Rail, build_rail
from sftrl.environments.virl.routes import RouteInfo
from sftrl.street_view.city import load_city


def parse_routes(data: Any, stem: str = "official") -> list[RouteInfo]:
    """RouteInfo objects from decoded JSON in any of the accepted layouts."""
    if isinstance(data, dict):
        items = [data]
    elif isinstance(data, list) and data and isinstance(data[0], list):
        items = data[0]  # SFTvsRL: [[route_info, ...], count]
    elif isinstance(data, list):
        items = data
    else:
        raise ValueError(f"unrecognised route file layout: {type(data).__name__}")
    routes = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"route {i} is not an object")
        route = RouteInfo.model_validate(item)
        if route.route_id is None:
            route = route.model_copy(update={"route_id": f"{stem}-{i:04d}"})
        routes.append(route)
    if not routes:
        raise ValueError("the route file holds no routes")
    return routes


def load_routes(path: str | Path) -> list[RouteInfo]:
    """Read an official route file (see the module docstring for the layouts).

    Every failure is a ValueError whose one-line message names the file.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read routes file {p}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"routes file {p} is not JSON: {exc!s:.120}") from None
    try:
        return parse_routes(data, stem=p.stem)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "route"
        raise ValueError(f"routes file {p}: {where}: {err['msg']}") from None
    except ValueError as exc:
        raise ValueError(f"routes file {p}: {exc}") from None


def official_rail(route: RouteInfo, city: str | None = "nyc", **kwargs: Any) -> Rail:
    """The rail of an official route on ``city``'s graph (geocode-only when the graph misses it)."""
    return build_rail(route, load_city(city) if city else None, **kwargs)
