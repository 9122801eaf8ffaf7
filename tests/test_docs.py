import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_configuration_reference_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "configdoc.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_setting_is_described() -> None:
    from pydantic import BaseModel

    from clarion.settings import NamespaceOptions, Settings

    models: list[type[BaseModel]] = [Settings, NamespaceOptions]
    for field in Settings.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            models.append(field.annotation)
    for model in models:
        for name, field in model.model_fields.items():
            nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
            if name != "namespaces" and not nested:
                assert field.description, f"{model.__name__}.{name} has no description"
