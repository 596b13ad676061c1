"""V-IRL routes, instructions and rails on the shipped city data: determinism, splits, wrap-around."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sftrl.environments.virl.instructions import instruction_lines
from sftrl.environments.virl.official import load_routes, official_rail, parse_routes
from sftrl.environments.virl.rail import INTERSECTION, NO_LANDMARK, build_rail, turn_action
from sftrl.environments.virl.routes import (
    RouteInfo,
    find_turns,
    generate_routes,
    milestone_block,
    relative_turn,
    split_manifest,
    split_routes,
)
from sftrl.street_view.city import load_city
from sftrl.street_view.geometry import RELATIVE_PHRASES, haversine_m

FIXTURES = Path(__file__).parent / "fixtures" / "virl"
REL = r"(front|right front|right|right behind|behind|left behind|left|left front)"
WHERE = "(" + "|".join(re.escape(p) for p in RELATIVE_PHRASES.values()) + ")"  # how prompts say REL
TURN = r"(left|right|slightly left|slightly right)"
DIR = r"(north|northeast|east|southeast|south|southwest|west|northwest)"


def test_relative_turns_wrap_around_north():
    assert relative_turn(350, 10) == "slightly right"  # the official code calls this "left"
    assert relative_turn(10, 350) == "slightly left"
    assert relative_turn(300, 30) == "right"
    assert relative_turn(30, 300) == "left"
    assert relative_turn(0, 180) in ("left", "right")  # no "back" action: a U-turn is a full turn
    assert turn_action(350, 10, "relative") == "turn_direction(slightly right)"
    assert turn_action(350, 10, "absolute") == "turn_direction(north)"
    assert turn_action(10, 80, "absolute") == "turn_direction(east)"


def test_generation_is_deterministic_and_seed_dependent():
    a = generate_routes("nyc", 5, seed=3, area="seen")
    b = generate_routes("nyc", 5, seed=3, area="seen")
    c = generate_routes("nyc", 5, seed=4, area="seen")
    assert [r.model_dump() for r in a] == [r.model_dump() for r in b]
    assert [r.path for r in a] != [r.path for r in c]


@pytest.mark.parametrize(
    ("city", "split"),
    [("nyc", "id"), ("nyc", "rule-ood"), ("nyc", "nyc-unseen"), ("helsinki", "visual-ood")],
)
def test_generated_routes_follow_the_recipe(city, split):
    cm = load_city(city)
    routes = split_routes(city, split)
    assert len(routes) == 100
    for r in routes[:40]:
        assert r.path and r.city == city
        d = haversine_m(*r.start_place.geocode, *r.dest_place.geocode)
        assert 50.0 <= d <= 150.0
        ms = r.milestones()
        assert 2 <= len(ms) <= 3  # 1-2 turns, then the destination
        assert len(ms) == len(r.route_results.geocode_list)
        assert len(r.route_results.landmark_list) == len(ms) - 1
        names = {lm.name for lm in r.route_results.landmark_list}
        assert r.start_place.name not in names and r.dest_place.name not in names
        turns = find_turns(cm, r.path)
        assert turns is not None and len(turns) == len(ms) - 1
        assert all(cm.is_intersection(r.path[i]) and abs(d) > 45 for i, d in turns)
        for lm, (i, _) in zip(r.route_results.landmark_list, turns, strict=True):
            assert haversine_m(*lm.geocode, *cm.latlng(r.path[i])) <= 25.0
        if city == "nyc":
            inside = [cm.in_area(*cm.latlng(v), "unseen") for v in r.path]
            assert all(inside) if split == "nyc-unseen" else not any(inside)


def test_splits_are_fixed_and_disjoint():
    ids = {s: split_manifest("nyc", s) for s in ("id", "rule-ood", "nyc-unseen")}
    ids["visual-ood"] = split_manifest("helsinki+baltimore", "visual-ood")
    assert ids["id"] == split_manifest("nyc", "id")  # cached and fixed
    paths = {
        s: {tuple(r.path or ()) for r in split_routes("nyc", s)} for s in ("id", "rule-ood", "nyc-unseen")
    }
    assert not paths["id"] & paths["rule-ood"]
    assert not paths["id"] & paths["nyc-unseen"] and not paths["rule-ood"] & paths["nyc-unseen"]
    all_ids = [i for v in ids.values() for i in v]
    assert len(all_ids) == len(set(all_ids))
    cities = {r.city for r in split_routes("helsinki+baltimore", "visual-ood")}
    assert cities == {"helsinki", "baltimore"}


def test_instruction_text_format():
    route = split_routes("nyc", "id")[0]
    lines = instruction_lines(route)
    assert route.instruction == "\n".join(lines)
    assert re.fullmatch(rf"1\. First, turn {TURN} to face {DIR}\.", lines[0])
    for k, line in enumerate(lines[1:], start=2):
        assert line.startswith(f"{k}. ")
    for line in lines[2:-1:2]:
        assert re.fullmatch(rf"\d+\. Turn {TURN} to face {DIR}\.", line)
    for line in lines[1:-1:2]:
        assert re.fullmatch(
            rf"\d+\. Move forward until you reach next intersection where .+ is {WHERE}\.", line
        )
    dest = route.dest_place.name
    assert re.fullmatch(
        rf"\d+\. Move forward until you reach destination where {re.escape(dest)} is {WHERE}\.",
        lines[-1],
    )


@pytest.mark.parametrize(
    "name", ['Clarence "Du" Burns Arena', 'Paul\'s \\"Da Burger Joint\\"', "Cafe {Bar}", "Bar}", '"']
)
def test_milestone_text_keeps_landmark_names_with_quotes_and_braces(name):
    # City data holds such names (Baltimore: Clarence "Du" Burns Arena; NYC: Babies\"R\"Us).
    text = milestone_block(1, f"{name} is on your left", 40.0, 10.0, 95.0)
    text += milestone_block(2, "The destination Z is on your right", 30.0, 95.0, 95.0)
    info = RouteInfo.model_validate(
        {**json.loads((FIXTURES / "route_infos_ny_moma.json").read_text()), "milestone_info": text}
    )
    ms = info.milestones()
    assert [m.landmarks for m in ms] == [f"{name} is on your left", "The destination Z is on your right"]
    assert ms[0].landmark_name_and_relation == (name, "left")
    assert [m.to_next_intersection_heading for m in ms] == [95, 95]
    assert (
        instruction_lines(info)[1]
        == f"2. Move forward until you reach next intersection where {name} is on your left."
    )


def test_split_routes_with_quoted_landmark_names_describe_them_whole():
    # nyc-id-0-0011's first milestone is \"Curry hill\" (the NYC data keeps the backslashes); it read "\".
    route = split_routes("nyc", "id")[11]
    name = route.route_results.landmark_list[0].name
    assert '"' in name
    assert route.milestones()[0].landmark_name_and_relation == (
        name,
        route.route_results.landmark_list[0].spatial_relation,
    )
    assert f"where {name} is " in route.instruction
    rail = build_rail(route, load_city("nyc"))
    assert rail.points[[p.milestone for p in rail.points].index(0)].observation.startswith(f"{name} is ")


@pytest.mark.parametrize("actions", ["absolute", "relative"])
def test_rail_actions_observations_and_drops(actions):
    cm = load_city("nyc")
    route = split_routes("nyc", "id")[2]
    rail = build_rail(route, cm, actions, straight_line_length=5, drop_rate=0.5, seed=0)
    pts = rail.points
    assert pts[0].action.startswith("turn_direction(") and pts[-1].action == "stop()"
    assert [p.action for p in pts].count("stop()") == 1
    turns = [p for p in pts if p.action.startswith("turn_")]
    assert len(turns) == len(route.milestones())
    assert all(p.intersection == (INTERSECTION in p.observation) for p in pts)
    assert sum(p.intersection for p in pts) == len(turns) - 1
    assert all(p.node in route.path for p in pts)
    assert route.dest_place.name in pts[-1].observation
    assert any(p.observation == NO_LANDMARK for p in pts) or len(pts) < 8
    full = build_rail(route, cm, actions, straight_line_length=5, drop_rate=0.0)
    assert len(full) > len(rail)
    assert len(build_rail(route, cm, actions, drop_rate=0.5, seed=1)) == len(rail)  # fraction is fixed
    # the instruction sentence advances with the legs
    assert pts[0].instruction.startswith("1. First") and pts[-1].instruction == rail.instructions[-1]


def test_official_single_route_loads_and_snaps_to_nyc():
    route = load_routes(FIXTURES / "route_infos_ny_moma.json")[0]
    assert route.dest_place.name == "MoMA Design Store"
    assert route.route_results.geocode_list[0] == pytest.approx((40.72422891501083, -73.99779012634859))
    ms = route.milestones()
    assert [m.to_next_intersection_heading for m in ms] == [298, 212, 120]
    assert ms[1].landmarks == "Aritzia is on your left front"
    assert "place_id" in (route.dest_place.model_extra or {})  # lenient: extra keys are kept
    rail = official_rail(route, "nyc")
    assert not rail.geocode_only and rail.points[-1].action == "stop()"
    assert [p.action for p in rail.points if p.action.startswith("turn_")] == [
        "turn_direction(northwest)",
        "turn_direction(southwest)",
        "turn_direction(southeast)",
    ]


def test_official_route_outside_the_graph_is_geocode_only():
    route = load_routes(FIXTURES / "route_infos_sf_apple.json")[0]
    rail = official_rail(route, "nyc", actions="relative")
    assert rail.geocode_only and all(p.node is None for p in rail.points)
    assert rail.points[-1].action == "stop()"


def test_sftvsrl_list_layout():
    raw = (FIXTURES / "route_infos_ny_moma.json").read_text()

    one = json.loads(raw)
    routes = parse_routes([[one, one], 2], stem="x")
    assert [r.route_id for r in routes] == ["x-0000", "x-0001"]
    assert isinstance(routes[0], RouteInfo)
    with pytest.raises(ValueError):
        parse_routes(42)


def test_split_route_sets_match_the_shipped_manifest():
    from sftrl.environments.virl.routes import build_manifest, shipped_manifest

    built, shipped = build_manifest(), shipped_manifest()
    assert built == shipped, "route generation changed: rerun scripts/build_virl_manifest.py and review"
    prints = {s: {r["fingerprint"] for r in rs} for s, rs in shipped["splits"].items()}
    assert all(len(v) == 100 for v in prints.values())
    splits = list(prints)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not prints[a] & prints[b], (a, b)
