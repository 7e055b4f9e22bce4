import pytest

from hutch.cli.gotemplate import Template, TemplateError, render_rows

INFO = {
    "Id": "abc123",
    "Name": "/web",
    "State": {"Status": "running", "Running": True, "Pid": 42, "ExitCode": 0},
    "Config": {"Env": ["A=1", "B=2"], "Labels": {"tier": "front", "app": "x"}, "Cmd": None},
    "Args": [],
}


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("{{.State.Status}}", "running"),
        ("{{.State.Pid}} {{.State.Running}}", "42 true"),
        ("{{json .State}}", '{"Status": "running", "Running": true, "Pid": 42, "ExitCode": 0}'),
        ('{{index .Config.Labels "tier"}}', "front"),
        ("{{range .Config.Env}}[{{.}}]{{end}}", "[A=1][B=2]"),
        ("{{range $k := .Args}}x{{else}}none{{end}}", "none"),
        ('{{join .Config.Env ","}}', "A=1,B=2"),
        ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
        ("{{if eq_missing}}", None),
        ("{{with .State}}{{.Status}}{{end}}", "running"),
        ("{{.Name | upper}}", "/WEB"),
        ('{{printf "%s-%d" .Id .State.Pid}}', "abc123-42"),
        ("{{len .Config.Env}}", "2"),
        ("{{range .Config.Labels}}{{.}} {{end}}", "x front "),
        ("{{.Config.Cmd}}", "<no value>"),
        ("a {{- .Id -}} b", "aabc123b"),
        ("{{if .Args}}args{{else if .State.Running}}running{{else}}other{{end}}", "running"),
        ("{{$.Id}}", "abc123"),
        ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", "app=x;tier=front;"),
        ("{{range $e := .Config.Env}}{{$e}}{{$.Id}} {{end}}", "A=1abc123 B=2abc123 "),
    ],
)
def test_render(source, text):
    if text is None:
        with pytest.raises(TemplateError, match="not defined"):
            Template(source)
        return
    assert Template(source).render(INFO) == text


@pytest.mark.parametrize(
    "source", ["{{.State.Nope}}", "{{range .Args}}", "{{end}}", "{{nosuch .Id}}", "{{.Id |}}"]
)
def test_errors_are_one_line_and_name_the_template(source):
    with pytest.raises(TemplateError) as err:
        Template(source).render(INFO)
    assert source in str(err.value) and "\n" not in str(err.value)


def test_rows_and_table():
    rows = [{"ID": "a1", "Names": "web"}, {"ID": "b2", "Names": "database"}]
    assert render_rows("{{.Names}}", rows) == "web\ndatabase\n"
    assert render_rows("table {{.ID}}\\t{{.Names}}", rows) == (
        "CONTAINER ID   NAMES\na1             web\nb2             database\n"
    )
