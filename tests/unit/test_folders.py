"""models/ezigen registration and the messages for missing model files."""
import folder_paths
import pytest

from tiny_models import load_pack


@pytest.fixture(autouse=True)
def restore_registration(monkeypatch):
    """These tests point models/ezigen at their tmp_path: put the registration back afterwards, as a later test
    that lists the folder (every node's schema does) must not meet a folder that pytest has since removed."""
    load_pack()  # registers the folder
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ezigen", folder_paths.folder_names_and_paths["ezigen"])
    yield
    folder_paths.filename_list_cache.clear()


def test_registration_keeps_paths_from_extra_model_paths(tmp_path):
    folders = load_pack().nodes.folders
    folder_paths.folder_names_and_paths["ezigen"] = ([str(tmp_path / "from-yaml")], set())  # as the YAML leaves it
    folders.register_model_folder()
    paths, extensions = folder_paths.folder_names_and_paths["ezigen"]
    assert paths[0] == str(tmp_path / "from-yaml") and paths[1].endswith("models/ezigen")
    assert ".safetensors" in extensions and ".bin" in extensions


def test_missing_file_messages_name_folder_expected_file_source_and_converter(tmp_path):
    folders = load_pack().nodes.folders
    empty, filled = tmp_path / "empty", tmp_path / "filled"
    empty.mkdir()
    (filled / "checkpoint-200000").mkdir(parents=True)
    (filled / "checkpoint-200000" / "model.safetensors").write_bytes(b"x")
    folder_paths.folder_names_and_paths["ezigen"] = ([str(empty)], set(folder_paths.supported_pt_extensions))
    folder_paths.filename_list_cache.clear()
    message = folders.check_model_file("ezigen", "ezigen_sd21base.safetensors")
    assert "'ezigen_sd21base.safetensors' is not in models/ezigen (it is empty)" in message
    assert str(tmp_path) not in message  # no server paths
    assert "checkpoint-200000" in message and "github.com/ZichengDuan/EZIGen" in message
    assert "python -m ezigen_lib.convert" in message
    folder_paths.folder_names_and_paths["ezigen"] = ([str(filled)], set(folder_paths.supported_pt_extensions))
    folder_paths.filename_list_cache.clear()
    assert folders.check_model_file("ezigen", "checkpoint-200000/model.safetensors") is True
    other = folders.check_model_file("ezigen", "other.safetensors")
    assert "it holds 1 other file(s): pick one in the list" in other and "checkpoint-200000/" not in other
