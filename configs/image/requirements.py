"""Run by the image build: print the requirements to install, one a line: pyproject.toml's
dependencies, then those of each extra named in EXTRAS (comma-separated, e.g. `ray`; an extra that
names clipgate[other] brings other's too). An extra pyproject.toml lacks is an error."""

import re
import sys
import tomllib

pyproject, wanted = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
with open(pyproject, "rb") as fh:
    project = tomllib.load(fh)["project"]
extras = project.get("optional-dependencies", {})
requirements = list(project["dependencies"])
todo, seen = [name.strip() for name in wanted.split(",") if name.strip()], set()
while todo:
    name = todo.pop(0)
    if name in seen:
        continue
    if name not in extras:
        sys.exit(f"requirements.py: pyproject.toml has no extra {name!r} (it has: {', '.join(extras)})")
    seen.add(name)
    for requirement in extras[name]:
        own = re.fullmatch(r"clipgate\[([^\]]+)\]", requirement.replace(" ", ""))
        if own:
            todo += own.group(1).split(",")
        else:
            requirements.append(requirement)
print("\n".join(requirements))
