from __future__ import annotations

from beamctl.config.parse import MAX_BYTES, MAX_NODES, parse


def test_values_and_places():
    doc, problems = parse(b"name: a\nimage:\n  commands:\n    - echo hi\n", "beam.yaml")
    assert problems == []
    assert doc.data == {"name": "a", "image": {"commands": ["echo hi"]}}
    assert doc.place(("image", "commands", 0)) == (4, 7)
    assert doc.place(("image",), key=True) == (2, 1)
    assert doc.place(("image", "missing", 3)) == (3, 3)  # nearest parent that exists


def test_nested_duplicate_key_names_both_lines():
    _, problems = parse(b"image:\n  commands: []\n  commands: [x]\n", "f.yaml")
    assert [p.render() for p in problems] == [
        "f.yaml:3:3: image.commands: duplicate key 'commands' (first at line 2); YAML would silently "
        "keep only the last one, so remove one of them"]


def test_file_over_the_limit_is_refused_unread():
    _, problems = parse(b"#" * (MAX_BYTES + 1), "big.yaml")
    assert [p.message for p in problems] == [
        "the file is 1.0 MiB; a beam.yaml may be at most 1 MiB (is this the right file?)"]


def test_alias_expansion_is_bounded():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):  # 10**10 values if expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1 if i > 1 else ''}"] * 10) + "]")
    _, problems = parse("\n".join(lines).encode(), "bomb.yaml")
    assert len(problems) == 1
    assert problems[0].message.startswith(f"the document expands to more than {MAX_NODES} values")


def test_shared_aliases_below_the_bound_are_fine():
    _, problems = parse(b"x-a: &a [1, 2]\nb: *a\nc: *a\n", "f.yaml")
    assert problems == []


def test_explicit_keys_win_over_merged_ones():
    doc, problems = parse(b"x: &d {cpu: 1, memory: 2Gi}\ny:\n  <<: *d\n  cpu: 4\n", "f.yaml")
    assert problems == [] and doc.data["y"] == {"cpu": 4, "memory": "2Gi"}


def test_byte_order_mark_is_accepted():
    doc, problems = parse("\ufeffname: a\n".encode(), "f.yaml")
    assert problems == [] and doc.data == {"name": "a"}


def test_non_string_keys_are_refused():
    _, problems = parse(b"1: a\n[x]: b\n", "f.yaml")
    assert [p.message for p in problems] == ["keys must be plain strings, not int '1'",
                                             "keys must be plain strings"]
