"""The markdown tables that the benchmark scripts print and write (``multigen.benchmarking.markdown_table``)."""

from multigen.benchmarking import markdown_table, table_cell


def test_columns_follow_first_appearance_and_missing_cells_are_empty():
    table = markdown_table([{"a": 1, "b": "x"}, {"c": 2.0, "a": 3}])
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1 | x |  |", "| 3 |  | 2 |"]


def test_given_columns_select_and_order():
    table = markdown_table([{"a": 1, "b": 2, "c": 3}], ["c", "a", "d"])
    assert table.splitlines() == ["| c | a | d |", "|---|---|---|", "| 3 | 1 |  |"]


def test_cells_cannot_break_the_table():
    assert table_cell("a|b\nc") == "a/b c"
    assert table_cell(1 / 3) == "0.3333"
    assert table_cell(None) == ""
    assert table_cell({"k": 0.5, "n": 2}) == "k 0.5, n 2"
    assert all(line.count("|") == 3 for line in markdown_table([{"x": "1|2", "y": "a\nb"}]).splitlines())
    assert markdown_table([{"q(x|y)": 1}]).splitlines()[0] == "| q(x/y) |"


def test_no_rows():
    assert markdown_table([]) == "(no rows)"
