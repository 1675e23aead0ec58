"""The chart's storage sealing key: generated into a Secret it keeps (across upgrades through
``lookup``, and on uninstall), or taken from an existing Secret with older keys for a rotation;
mounted read-only into the pod and named by the rendered config's ``storageSealing``, which the
issuer's own loader accepts without the "stored unsealed" warning, also for PostgreSQL."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from portcullis.issuer import parse_config
from portcullis.storage.sealing import decode_key

from tests.support.chart import FULLNAME, config_of, documents, find, render, render_set

MOUNT = "/etc/portcullis/sealing"


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def _sealing_volume(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((v for v in _pod(docs)["volumes"] if v["name"] == "sealing"), None)


def _loads_without_warnings(docs: list[dict[str, Any]]) -> None:
    text = base64.b64decode(find(docs, "Secret", FULLNAME)["data"]["config.yaml"]).decode()
    env = {"KUBERNETES_CLIENT_SECRET": "s" * 24, "PORTCULLIS_STORAGE_PASSWORD": "pw"}
    assert parse_config(text, "chart.yaml", env).warnings == ()


def test_default_install_generates_a_kept_key_and_mounts_it() -> None:
    _, docs = render_set("defaults")
    secret = find(docs, "Secret", f"{FULLNAME}-sealing")
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    key_text = base64.b64decode(secret["data"]["key"]).decode()
    assert len(decode_key(key_text, "chart")) == 32
    volume = _sealing_volume(docs)
    assert volume == {
        "name": "sealing",
        "secret": {"secretName": f"{FULLNAME}-sealing", "defaultMode": 0o440},
    }
    (container,) = _pod(docs)["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "sealing")
    assert mount == {"name": "sealing", "mountPath": MOUNT, "readOnly": True}
    assert config_of(docs)["storageSealing"] == {"keyFile": f"{MOUNT}/key"}
    _loads_without_warnings(docs)


def test_every_install_without_an_earlier_secret_gets_a_new_random_key() -> None:
    first = find(documents(render({})), "Secret", f"{FULLNAME}-sealing")["data"]["key"]
    second = find(documents(render({})), "Secret", f"{FULLNAME}-sealing")["data"]["key"]
    assert first != second


def test_postgres_replicas_share_the_key_and_load_without_the_unsealed_warning() -> None:
    _, docs = render_set("ha-postgres")
    assert _sealing_volume(docs) is not None
    assert config_of(docs)["storageSealing"] == {"keyFile": f"{MOUNT}/key"}
    _loads_without_warnings(docs)


def test_existing_secret_with_previous_keys_for_a_rotation() -> None:
    values = {
        "storageSealing": {
            "existingSecret": {"name": "portcullis-sealing", "key": "key-2026"},
            "previousKeys": ["key-2025", "key-2024"],
        }
    }
    docs = documents(render(values))
    assert not [d for d in docs if d["metadata"]["name"] == f"{FULLNAME}-sealing"]
    volume = _sealing_volume(docs)
    assert volume is not None
    assert volume["secret"]["secretName"] == "portcullis-sealing"
    assert config_of(docs)["storageSealing"] == {
        "keyFile": f"{MOUNT}/key-2026",
        "previousKeyFiles": [f"{MOUNT}/key-2025", f"{MOUNT}/key-2024"],
    }


@pytest.mark.parametrize(
    "values",
    [{"storage": {"type": "memory"}}, {"storageSealing": {"enabled": False}}],
    ids=["memory", "disabled"],
)
def test_memory_or_disabled_renders_no_key(values: dict[str, Any]) -> None:
    docs = documents(render(values))
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [FULLNAME]
    assert _sealing_volume(docs) is None
    assert "storageSealing" not in config_of(docs)


def test_disabled_lets_the_config_carry_its_own_section() -> None:
    own = {"key": "$PORTCULLIS_SEALING_KEY"}
    docs = documents(
        render({"storageSealing": {"enabled": False}, "config": {"storageSealing": own}})
    )
    assert config_of(docs)["storageSealing"] == own


def test_a_config_section_next_to_the_chart_managed_key_is_refused() -> None:
    with pytest.raises(Exception, match=r"config.storageSealing: the chart sets it"):
        render({"config": {"storageSealing": {"keyFile": "/elsewhere"}}})


@pytest.mark.parametrize(
    "values",
    [
        {"storageSealing": {"existingSecret": {"key": ""}}},
        {"storageSealing": {"previousKeys": ["../escape"]}},
        {"storageSealing": {"unknown": True}},
    ],
)
def test_schema_refuses_malformed_values(values: dict[str, Any]) -> None:
    with pytest.raises(Exception, match="storageSealing"):
        render(values)
