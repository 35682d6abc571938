"""The persona catalog: built-in YAML personas, user overrides, typed errors."""

import pytest

from personas.catalog import PersonaCatalog
from personas.errors import PersonaDefinitionError, UnknownPersonaError


def test_builtin_personas():
    cat = PersonaCatalog.load()
    assert cat.names()[0] == "me"
    assert {"me", "logician", "poet", "philosopher"} <= set(cat.names())
    poet = cat.get("Poet")
    assert poet.display_name == "Poet" and "verse" in poet.system_prompt
    # generation parameters differ per persona
    assert cat.get("logician").generation.temperature < poet.generation.temperature


def test_unknown_persona_lists_valid_names():
    with pytest.raises(UnknownPersonaError) as err:
        PersonaCatalog.load().get("pirate")
    assert "pirate" in str(err.value) and "logician" in str(err.value)


def test_user_folder_adds_and_overrides(tmp_path):
    (tmp_path / "pirate").mkdir()
    (tmp_path / "pirate" / "persona.yaml").write_text(
        "name: pirate\ndisplay_name: Pirate\ndescription: Arr.\nsystem_prompt: Talk like a pirate.\n"
        "generation:\n  temperature: 1.0\n"
    )
    (tmp_path / "poet").mkdir()
    (tmp_path / "poet" / "persona.yaml").write_text(
        "name: poet\ndisplay_name: My Poet\ndescription: Mine.\nsystem_prompt: Haiku only.\n"
    )
    cat = PersonaCatalog.load(tmp_path)
    assert cat.get("pirate").generation.temperature == 1.0
    assert cat.get("poet").display_name == "My Poet"


@pytest.mark.parametrize(
    "text",
    [
        "name: x\n",  # missing fields
        "- a list\n",
        "name: Bad Name\ndisplay_name: a\ndescription: b\nsystem_prompt: c\n",
        "name: ok\ndisplay_name: a\ndescription: b\nsystem_prompt: c\ngeneration:\n  temprature: 1\n",
        "name: ok\ndisplay_name: a\ndescription: b\nsystem_prompt: c\ngeneration:\n  temperature: hot\n",
        "name: [unclosed\n",
    ],
)
def test_malformed_persona_is_a_clear_error(tmp_path, text):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "persona.yaml").write_text(text)
    with pytest.raises(PersonaDefinitionError):
        PersonaCatalog.load(tmp_path)
