"""Shared checkpoint reading: the hub fetcher's offline switch, JSON configs, the tensor-fit check."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from antiphon.checkpoint_io import HubRepo, check_tensors, read_json
from antiphon.errors import CheckpointError


def test_hub_repo_goes_offline_after_the_first_connection_failure(monkeypatch):
    calls = []

    def download(repo_id, name, local_files_only=False):
        calls.append((name, local_files_only))
        raise LocalEntryNotFoundError("no connection")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    repo = HubRepo("kyutai/x")
    assert repo.fetch("config.json") is None and repo.fetch("weights.safetensors") is None
    assert calls == [("config.json", False), ("weights.safetensors", True)]  # one network try only
    assert "cannot be reached" in str(repo.missing("the weights"))


def test_read_json_errors(tmp_path):
    with pytest.raises(CheckpointError, match="LM config not found"):
        read_json(tmp_path / "config.json", "LM config")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="is not a JSON object"):
        read_json(tmp_path / "bad.json", "codec config")


def test_check_tensors_names_every_problem():
    expected = {"a": torch.Size([2]), "b": torch.Size([3])}
    with pytest.raises(CheckpointError, match=r"missing tensors: b; unexpected tensors: c; misshaped tensors: a: checkpoint \[4\]"):
        check_tensors(expected, {"a": torch.zeros(4), "c": torch.zeros(1)}, "ckpt", "model")
    check_tensors(expected, {"a": torch.zeros(2), "b": torch.zeros(3)}, "ckpt", "model")
