"""Bad input is one line naming the file (issue 13, item 5): latin-1 data
files, hub models and datasets offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlt.errors import XltError, hub_errors, open_utf8


def latin1(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1"))
    return path


def test_latin1_nli_file_is_one_line_naming_file_and_line(tmp_path):
    from xlt.tasks.pair import read_pair_tsv

    path = latin1(tmp_path / "test-es.tsv", "Hola\tAdios\tneutral\nEl niño\tUn niño\tentailment\n")
    with pytest.raises(XltError) as err:
        read_pair_tsv(str(path), "xnli-es", ["premise", "hypothesis", "label"], ["entailment", "neutral", "contradiction"],
                      header=False)
    assert str(err.value).startswith(f"{path}:2: not UTF-8 (byte 0xf1 at column 6")
    assert "\n" not in str(err.value)


def test_latin1_ner_file_is_one_line_naming_file_and_line(tmp_path):
    from xlt.tasks.ner import read_ner_tsv

    path = latin1(tmp_path / "dev.tsv", "Madrid\tB-LOC\n\nMünchen\tB-LOC\n")
    with pytest.raises(XltError, match=rf"^{path}:3: not UTF-8"):
        read_ner_tsv(str(path), ["O", "B-LOC", "I-LOC"], "ner-de")


def test_a_sweep_records_the_one_line(tmp_path):
    """The failed job's results.json carries the same line (not a traceback)."""
    import json

    from xlt import cli
    from xlt.contract import compose

    root = tmp_path / "data"
    (root / "nli" / "xnli").mkdir(parents=True)
    latin1(root / "nli" / "xnli" / "dev-en.tsv", "caf\xe9\tx\tneutral\n")
    cfg = compose(["model=tiny", "data=demo", f"data.root={root}", f"paths.output_dir={tmp_path / 'job'}",
                          f"paths.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(XltError) as err:
        open_utf8(str(root / "nli" / "xnli" / "dev-en.tsv"))
    cli.record_failure(cfg, str(err.value), started=0.0)
    saved = json.loads((tmp_path / "job" / "results.json").read_text())
    assert saved["status"] == "failed" and saved["error"].startswith(f"{root}/nli/xnli/dev-en.tsv:1: not UTF-8")


def test_utf8_files_read_as_before(tmp_path):
    path = tmp_path / "ok.tsv"
    path.write_text("a\tb\r\nc\td\n", encoding="utf-8")
    with open_utf8(str(path)) as handle:
        assert handle.read() == "a\tb\nc\td\n"


def test_a_bom_is_dropped_and_a_nul_byte_is_one_line(tmp_path):
    """A byte-order mark (Excel, Notepad) is not part of the first premise; a
    NUL byte (a binary or broken file) is never trained on."""
    bom = tmp_path / "bom.tsv"
    bom.write_bytes(b"\xef\xbb\xbfA man sleeps.\tA person rests.\tentailment\n")
    with open_utf8(str(bom)) as handle:
        assert handle.read() == "A man sleeps.\tA person rests.\tentailment\n"
    nul = tmp_path / "nul.tsv"
    nul.write_bytes(b"ok\tok\tneutral\nA man\x00 sleeps.\tA person rests.\tentailment\n")
    with pytest.raises(XltError) as err:
        open_utf8(str(nul))
    assert str(err.value) == f"{nul}:2: NUL byte at column 6 (a binary or UTF-16 file?); data files must be UTF-8 text"


def test_hub_model_offline_is_one_line(monkeypatch):
    import transformers

    from xlt.config import ModelConfig
    from xlt.models.encoder import load_encoder, load_tokenizer

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", offline)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    cfg = ModelConfig(name="mbert", source="hub", pretrained="bert-base-multilingual-cased")
    for load in (load_encoder, load_tokenizer):
        with pytest.raises(XltError) as err:
            load(cfg, "/tmp")
        message = str(err.value)
        assert "cannot load model 'bert-base-multilingual-cased' (model=mbert) from the HuggingFace hub" in message
        assert "model=e5_small" in message and "\n" not in message



def test_a_hub_model_without_network_or_cache_is_one_line_online_too(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset on a machine without network: the job first asks
    the hub's API which commit to load, and huggingface_hub's HTTP client
    raises its own ConnectError (not an OSError): one line, as offline."""
    import huggingface_hub
    from huggingface_hub import constants

    from xlt import revisions
    from xlt.config import ModelConfig
    from xlt.models.encoder import load_encoder

    class TransportError(Exception):  # httpx's hierarchy (httpx / httpx2, whichever huggingface_hub uses)
        pass

    class ConnectError(TransportError):
        pass

    class Api:
        def model_info(self, repo, revision):
            raise ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    revisions.start_job()
    cfg = ModelConfig(name="mbert", source="hub", pretrained="bert-base-multilingual-cased")
    try:
        with pytest.raises(XltError) as err:
            load_encoder(cfg, str(tmp_path))
    finally:
        revisions.start_job()
    message = str(err.value)
    assert message.startswith("cannot load model 'bert-base-multilingual-cased' (model=mbert) from the HuggingFace hub "
                              "(ConnectError: [Errno -3] Temporary failure in name resolution)")
    assert "\n" not in message

def test_hub_errors_leaves_bugs_alone():
    with pytest.raises(TypeError):
        with hub_errors("dataset x"):
            raise TypeError("a bug, not the network")
    with pytest.raises(XltError, match="cannot load dataset x from the HuggingFace hub .ConnectionError"):
        with hub_errors("dataset x"):
            raise ConnectionError("Couldn't reach 'x' on the Hub")


@pytest.mark.slow
def test_a_corrupt_last_ckpt_is_set_aside_and_the_job_trains_again(tmp_path, cache_dir):
    from xlt.contract import compose
    from xlt.keys import checkpoint_dir
    from xlt.stages.job import run_job

    def job(name: str):
        return compose(["model=tiny", "data=demo", "task.train_limit=16", "task.eval_limit=4", "task.epochs=1",
                               "task.batch_size=8", "trainer.enable_progress_bar=false", "seed=7",
                               f"paths.output_dir={tmp_path / name}", f"paths.cache_dir={tmp_path / 'cache'}"])

    first = run_job(job("a"))
    checkpoint = checkpoint_dir(job("a")) / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated, e.g. killed while copying
    second = run_job(job("b"))
    assert second["status"] == "ok" and second["metrics"] == first["metrics"]  # retrained from scratch, same seed
    assert list(checkpoint.parent.glob("last.ckpt.corrupt-*")) and checkpoint.stat().st_size > 1000
