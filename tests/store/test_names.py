"""Model and file names: one visible path component of portable characters."""

from __future__ import annotations

import pytest

from model_store import InvalidName, ModelNotFound, ModelStore, StoreError
from model_store.names import MAX_NAME_LENGTH, did_you_mean, validate_filename, validate_name

BAD_NAMES = [
    "",
    "../x",
    "..",
    ".",
    ".hidden",
    "a/b",
    "/abs",
    "a\\b",
    "with space",
    "tab\tname",
    "new\nline",
    "-leading-dash",
    "semi;colon",
    "ünïcode",
    "x" * (MAX_NAME_LENGTH + 1),
    "datasets",  # reserved: the data set area lives beside the models
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize("name", ["moons", "Two_Moons-v2", "a.b.c", "0", "x" * MAX_NAME_LENGTH])
def test_valid_names_pass(name: str) -> None:
    assert validate_name(name) == name


def test_non_string_refused() -> None:
    with pytest.raises(InvalidName):
        validate_name(3)  # type: ignore[arg-type]


def test_invalid_name_is_a_store_error_and_value_error() -> None:
    with pytest.raises(StoreError):
        validate_name("../x")
    with pytest.raises(ValueError):
        validate_name("../x")


@pytest.mark.parametrize("name", ["../x", ".hidden", "", "a/b"])
def test_store_refuses_invalid_names_everywhere(store, tmp_path, name: str) -> None:
    """Every public entry point validates before touching the file system (or the bucket)."""
    for call in (
        lambda: store.versions(name),
        lambda: store.resolve(name),
        lambda: store.manifest(name),
        lambda: store.load(name),
        lambda: store.delete(name, 1),
        lambda: store.cleanup(name),
        lambda: store.publish(name, object()),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidName):
            call()
    assert list(tmp_path.iterdir()) == []  # nothing created outside or inside the root
    if hasattr(store, "objects"):  # nor in the bucket
        listing = store.objects.client.list_objects_v2(Bucket=store.objects.bucket)
        assert "Contents" not in listing


@pytest.mark.parametrize("filename", ["../p.png", ".p.png", "a/b.png", ""])
def test_plot_filenames_validated(filename: str) -> None:
    with pytest.raises(InvalidName):
        validate_filename(filename)


def test_did_you_mean_offers_close_spellings_and_initials() -> None:
    assert did_you_mean("demoo", ["demo", "moons"]) == " (did you mean 'demo'?)"
    assert did_you_mean("learning_rate", ["iterations", "lr", "batch_size"]) == (
        " (did you mean 'lr'?)"
    )
    assert did_you_mean("zzz", ["demo", "moons"]) == ""


def test_reading_a_store_folder_that_does_not_exist_says_so(tmp_path, monkeypatch) -> None:
    """Run from another folder, ModelStore("var/store") names the absolute folder it looked
    in instead of "no published version"."""
    monkeypatch.chdir(tmp_path)
    store = ModelStore("var/store")
    with pytest.raises(ModelNotFound) as err:
        store.load("demo")
    message = str(err.value)
    assert f"the store folder {tmp_path / 'var' / 'store'} does not exist" in message
    assert "CPFLOW_STORE_DIR" in message
    assert not (tmp_path / "var").exists()  # reading never creates the folder
