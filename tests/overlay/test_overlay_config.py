"""overlay.config: NodeConfig from TOML and from parsed tables; every value validated."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from overlay.config import (
    ConfigError,
    MetricSettings,
    Neighbour,
    NodeConfig,
    RoutingSettings,
)

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "overlay_node.toml"
KEY_HEX = "8f2c6a1d4e7b90c35a1f6e2d7c4b8a09e1d2c3b4a5968778695a4b3c2d1e0f10"


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"node_id": "a", "key_hex": "00" * 16}
    data.update(extra)
    return data


def error_of(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_dict(data)
    return info.value


# -- the sample file ---------------------------------------------------------------------------


def test_sample_file_loads_with_every_value() -> None:
    config = NodeConfig.from_toml(SAMPLE)
    assert config.node_id == "a"
    assert config.key == bytes.fromhex(KEY_HEX)
    assert config.listen_port == 7000
    assert config.neighbours == (
        Neighbour("b", "198.18.0.2", 7000),
        Neighbour("c", "198.18.0.3", 7000),
    )
    # The sample documents the defaults: loading it must give exactly them.
    assert config.metrics == MetricSettings()
    assert config.routing == RoutingSettings()
    assert (config.reconnect_min, config.reconnect_max) == (0.2, 10.0)
    assert config.max_frame == 65536 and config.user_timeout is None
    assert config.neighbour("c") == Neighbour("c", "198.18.0.3", 7000)
    assert config.neighbour("z") is None


def test_from_toml_accepts_str_path(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text('node_id = "n17"\nkey = "correct horse battery staple"\n')
    config = NodeConfig.from_toml(str(path))
    assert config.node_id == "n17" and config.key == b"correct horse battery staple"


def test_defaults_from_a_minimal_table() -> None:
    config = NodeConfig.from_dict(minimal())
    assert config.key == bytes(16)
    assert config.neighbours == ()
    assert config.metrics.loss_window == 200 and config.routing.policy == "latency"


def test_neighbour_objects_are_accepted_from_python() -> None:
    b = Neighbour("b", "10.0.0.2", 7001)
    assert NodeConfig.from_dict(minimal(neighbours=[b])).neighbours == (b,)


def test_key_is_not_in_repr() -> None:
    config = NodeConfig.from_dict(minimal(key_hex="ab" * 16))
    assert "abab" not in repr(config) and "key" not in repr(config)


def test_ints_are_accepted_for_seconds_and_stored_as_floats() -> None:
    config = NodeConfig.from_dict(minimal(routing={"hold_time": 3}, user_timeout=5))
    assert config.routing.hold_time == 3.0 and isinstance(config.routing.hold_time, float)
    assert config.user_timeout == 5.0 and isinstance(config.user_timeout, float)


def test_composite_weights_from_a_toml_array() -> None:
    config = NodeConfig.from_dict(minimal(routing={"composite_weights": [2, 0.5, 0]}))
    assert config.routing.composite_weights == (2.0, 0.5, 0.0)


# -- the key -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, key, fragment",
    [
        ({}, "key", "required"),
        ({"key": "x" * 16, "key_hex": "00" * 16}, "key_hex", "not both"),
        ({"key_hex": "00" * 15}, "key_hex", "at least 16"),
        ({"key_hex": "zz" * 16}, "key_hex", "hex"),
        ({"key_hex": "0" * 33}, "key_hex", "hex"),
        ({"key_hex": 1234}, "key_hex", "string"),
        ({"key": "short"}, "key", "at least 16"),
        ({"key": 12}, "key", "string"),
    ],
)
def test_bad_keys(fields: dict[str, Any], key: str, fragment: str) -> None:
    err = error_of({"node_id": "a", **fields})
    assert err.key == key and fragment in str(err)


def test_key_counts_utf8_bytes_not_characters() -> None:
    # 8 characters, 16 bytes of UTF-8: long enough.
    assert NodeConfig.from_dict({"node_id": "a", "key": "é" * 8}).key == "é".encode() * 8


# -- unknown keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, key",
    [
        (minimal(listen=7000), "listen"),
        (minimal(metrics={"loss_windw": 10}), "metrics.loss_windw"),
        (minimal(routing={"policy": "loss", "holdtime": 1}), "routing.holdtime"),
        (
            minimal(
                neighbours=[
                    {"node_id": "b", "address": "10.0.0.2", "port": 1},
                    {"node_id": "c", "address": "10.0.0.3", "port": 1, "weight": 2},
                ]
            ),
            "neighbours[1].weight",
        ),
    ],
)
def test_unknown_keys_are_rejected_by_name(data: dict[str, Any], key: str) -> None:
    err = error_of(data)
    assert err.key == key
    assert "unknown key" in str(err) and key in str(err)


# -- every field validated, the error naming it ------------------------------------------------


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"node_id": ""}, "node_id"),
        ({"node_id": "has space"}, "node_id"),
        ({"node_id": "x" * 65}, "node_id"),
        ({"node_id": 5}, "node_id"),
        ({"listen_port": 0}, "listen_port"),
        ({"listen_port": 65536}, "listen_port"),
        ({"listen_port": True}, "listen_port"),
        ({"listen_port": 7000.0}, "listen_port"),
        ({"reconnect_min": 0}, "reconnect_min"),
        ({"reconnect_min": "1"}, "reconnect_min"),
        ({"reconnect_max": float("inf")}, "reconnect_max"),
        ({"reconnect_min": 2.0, "reconnect_max": 1.0}, "reconnect_max"),
        ({"max_frame": 100}, "max_frame"),
        ({"max_frame": 1 << 25}, "max_frame"),
        ({"user_timeout": 0}, "user_timeout"),
        ({"user_timeout": float("nan")}, "user_timeout"),
        ({"metrics": {"sample_interval": 0}}, "metrics.sample_interval"),
        ({"metrics": {"probe_interval": -1}}, "metrics.probe_interval"),
        ({"metrics": {"idle_after": 0}}, "metrics.idle_after"),
        ({"metrics": {"loss_window": 0}}, "metrics.loss_window"),
        ({"metrics": {"loss_window": 2.5}}, "metrics.loss_window"),
        ({"metrics": {"loss_alpha": 0}}, "metrics.loss_alpha"),
        ({"metrics": {"loss_alpha": 1.5}}, "metrics.loss_alpha"),
        ({"metrics": {"loss_floor": 1.0}}, "metrics.loss_floor"),
        ({"metrics": {"loss_floor": -0.1}}, "metrics.loss_floor"),
        ({"metrics": {"down_after": 0}}, "metrics.down_after"),
        ({"metrics": {"probe_interval": 3.0, "down_after": 3.0}}, "metrics.probe_interval"),
        ({"metrics": "fast"}, "metrics"),
        ({"routing": {"policy": "fastest"}}, "routing.policy"),
        ({"routing": {"margin": 1.0}}, "routing.margin"),
        ({"routing": {"margin": -0.1}}, "routing.margin"),
        ({"routing": {"hold_time": -1}}, "routing.hold_time"),
        ({"routing": {"alternates": -1}}, "routing.alternates"),
        ({"routing": {"alternates": 1.0}}, "routing.alternates"),
        ({"routing": {"lsa_interval": 0}}, "routing.lsa_interval"),
        ({"routing": {"lsa_interval": 5, "lsa_refresh": 4}}, "routing.lsa_refresh"),
        ({"routing": {"lsa_refresh": 10, "lsa_max_age": 10}}, "routing.lsa_max_age"),
        ({"routing": {"change_threshold": -0.5}}, "routing.change_threshold"),
        ({"routing": {"composite_weights": [1, 1]}}, "routing.composite_weights"),
        ({"routing": {"composite_weights": [0, 0, 0]}}, "routing.composite_weights"),
        ({"routing": {"composite_weights": [1, -1, 1]}}, "routing.composite_weights"),
        ({"routing": {"composite_weights": "1,1,1"}}, "routing.composite_weights"),
        ({"neighbours": {"node_id": "b"}}, "neighbours"),
        ({"neighbours": ["b"]}, "neighbours[0]"),
        ({"neighbours": [{"node_id": "b", "port": 7000}]}, "neighbours[0].address"),
        ({"neighbours": [{"node_id": "b", "address": "10.0.0.2"}]}, "neighbours[0].port"),
        (
            {"neighbours": [{"node_id": "b", "address": "host.example", "port": 1}]},
            "neighbours[0].address",
        ),
        (
            {"neighbours": [{"node_id": "b", "address": "10.0.0.256", "port": 1}]},
            "neighbours[0].address",
        ),
        (
            {"neighbours": [{"node_id": "b", "address": "10.0.0.2", "port": 70000}]},
            "neighbours[0].port",
        ),
        (
            {"neighbours": [{"node_id": "b c", "address": "10.0.0.2", "port": 1}]},
            "neighbours[0].node_id",
        ),
        (
            {
                "neighbours": [
                    {"node_id": "b", "address": "10.0.0.2", "port": 1},
                    {"node_id": "b", "address": "10.0.0.3", "port": 1},
                ]
            },
            "neighbours[1].node_id",
        ),
        (
            {"neighbours": [{"node_id": "a", "address": "10.0.0.2", "port": 1}]},
            "neighbours[0].node_id",
        ),
    ],
)
def test_invalid_values_name_their_key(patch: dict[str, Any], key: str) -> None:
    data = minimal()
    data.update(copy.deepcopy(patch))
    err = error_of(data)
    assert err.key == key, str(err)
    assert str(err).startswith(f"{key}: ")


def test_missing_node_id() -> None:
    assert error_of({"key_hex": "00" * 16}).key == "node_id"


def test_document_must_be_a_table() -> None:
    with pytest.raises(ConfigError):
        NodeConfig.from_dict(["node_id", "a"])  # type: ignore[arg-type]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError) as info:
        MetricSettings(loss_alpha=0.0)
    assert info.value.key == "loss_alpha"
    with pytest.raises(ConfigError) as info:
        NodeConfig(node_id="a", key=b"k")
    assert info.value.key == "key"
    with pytest.raises(ConfigError) as info:
        NodeConfig(node_id="a", key=bytes(16), metrics={"loss_window": 5})  # type: ignore[arg-type]
    assert info.value.key == "metrics"
    with pytest.raises(ConfigError) as info:
        NodeConfig(node_id="a", key=bytes(16), neighbours=5)
    assert info.value.key == "neighbours"


# -- errors from files name the file -----------------------------------------------------------


def test_file_errors_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('node_id = "a"\nkey_hex = "' + "00" * 16 + '"\n[metrics]\nloss_alpha = 2.0\n')
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_toml(path)
    assert info.value.key == "metrics.loss_alpha"
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: metrics.loss_alpha: ")


def test_unparseable_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('node_id = "a\n')
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_toml(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_toml(path)
    assert str(path) in str(info.value) and "cannot read" in str(info.value)
