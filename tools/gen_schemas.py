"""Write the JSON Schemas in schemas/ from the models they describe.

The settings models (each package's settings.py, composed in appliance/flowenricher/config.py)
are the one definition of config.yaml's keys, defaults and bounds, and detect/rule_model.py
that of a detection rule; the schemas the service, the API and the Ansible role check files
against are generated from them.  Run after changing a model; tests/test_settings_models.py
fails while a committed schema is stale.

    python tools/gen_schemas.py          # rewrite the file
    python tools/gen_schemas.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.flowenricher.config import CONFIG_SCHEMA, RULES_SCHEMA, config_schema
from appliance.flowenricher.detect.rule_model import rules_schema

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def rendered() -> dict[str, str]:
    """File name -> the text it should hold."""
    return {name: json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
            for name, schema in ((CONFIG_SCHEMA, config_schema()), (RULES_SCHEMA, rules_schema()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed schema is stale")
    args = parser.parse_args()
    stale = []
    for name, text in rendered().items():
        path = SCHEMAS / name
        if path.read_text(encoding="utf-8") != text:
            stale.append(name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"stale: {', '.join(stale)} (run python tools/gen_schemas.py)", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
