//! Cases from Docker's "Format command and log output" page
//! (docs.docker.com/engine/cli/formatting) and the `ps`/`images`/`inspect` references,
//! on data shaped like `docker inspect`'s, with Go's outputs.

use serde_json::{Value, json};

use super::table::tabwrite;
use super::{ListFormat, MAX_OUTPUT, TemplateError, render, render_list};

fn container() -> Value {
    json!({
        "Id": "0123456789abcdef",
        "Name": "/My-Container",
        "Image": "debian:bookworm",
        "Args": ["-c", "sleep 1000"],
        "State": {"Status": "running", "Running": true, "Pid": 42, "ExitCode": 0},
        "Config": {
            "Cmd": ["sh", "-c", "sleep 1000"],
            "Env": ["PATH=/usr/bin", "TERM=xterm"],
            "Labels": {"com.example.version": "1.0", "b": "2"},
            "Entrypoint": null,
        },
        "Mounts": [{"Type": "volume", "Name": "data", "Destination": "/data", "RW": true}],
        "NetworkSettings": {
            "Networks": {
                "bridge": {"IPAddress": "172.17.0.2"},
                "backend": {"IPAddress": "10.89.0.5"},
            },
            "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]},
        },
        "Ratio": 0.5,
    })
}

fn run(t: &str) -> String {
    render(t, &container()).unwrap_or_else(|e| panic!("{t}: {e}"))
}

fn fails(t: &str) -> String {
    match render(t, &container()) {
        Ok(out) => panic!("{t}: printed {out:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn docker_documented_functions() {
    // join
    assert_eq!(run(r#"{{join .Args " , "}}"#), "-c , sleep 1000");
    // json
    assert_eq!(
        run("{{json .Mounts}}"),
        r#"[{"Destination":"/data","Name":"data","RW":true,"Type":"volume"}]"#
    );
    // lower, upper, title
    assert_eq!(run("{{lower .Name}}"), "/my-container");
    assert_eq!(run("{{upper .Name}}"), "/MY-CONTAINER");
    assert_eq!(
        render("{{title .}}", &json!("hello big_world-x")).unwrap(),
        "Hello Big_world-X"
    );
    // split
    assert_eq!(run(r#"{{split .Image ":"}}"#), "[debian bookworm]");
    assert_eq!(run(r#"{{index (split .Image ":") 1}}"#), "bookworm");
    // println in range
    assert_eq!(
        run("{{range .NetworkSettings.Networks}}{{println .IPAddress}}{{end}}"),
        "10.89.0.5\n172.17.0.2\n"
    );
    // pad and truncate
    assert_eq!(run("{{pad .Image 2 3}}|"), "  debian:bookworm   |");
    assert_eq!(render("{{pad . 2 3}}|", &json!("")).unwrap(), "|");
    assert_eq!(run("{{truncate .Image 6}}"), "debian");
    assert_eq!(run("{{truncate .Image 60}}"), "debian:bookworm");
    // len
    assert_eq!(
        run("{{len .Config.Env}} {{len .Name}} {{len .Config.Labels}}"),
        "2 13 2"
    );
    // {{json .}} of the whole value
    assert_eq!(
        render("{{json .}}", &json!({"b": 1, "a": "x"})).unwrap(),
        r#"{"a":"x","b":1}"#
    );
}

#[test]
fn inspect_reference_examples() {
    // docker inspect --format='{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}'
    assert_eq!(
        run("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"),
        "10.89.0.5172.17.0.2"
    );
    // docker inspect --format='{{range $p, $conf := .NetworkSettings.Ports}} {{$p}} -> {{(index $conf 0).HostPort}} {{end}}'
    assert_eq!(
        run(
            "{{range $p, $conf := .NetworkSettings.Ports}} {{$p}} -> {{(index $conf 0).HostPort}} {{end}}"
        ),
        " 80/tcp -> 8080 "
    );
    // docker inspect --format='{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}'
    assert_eq!(
        run(r#"{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}"#),
        "8080"
    );
    // docker inspect --format='{{json .Config}}' (keys sorted, as Go sorts a map's)
    assert!(
        run("{{json .Config}}")
            .starts_with(r#"{"Cmd":["sh","-c","sleep 1000"],"Entrypoint":null,"#)
    );
    assert_eq!(
        run("{{.State.Status}} {{.State.Pid}} {{.State.Running}}"),
        "running 42 true"
    );
    assert_eq!(
        run(r#"{{index .Config.Labels "com.example.version"}}"#),
        "1.0"
    );
}

#[test]
fn values_print_as_go_prints_them() {
    assert_eq!(run("{{.Config.Cmd}}"), "[sh -c sleep 1000]");
    assert_eq!(
        run("{{.Config.Labels}}"),
        "map[b:2 com.example.version:1.0]"
    );
    assert_eq!(
        run("{{.Ratio}} {{1.5}} {{3}} {{-2}} {{0x10}} {{'a'}}"),
        "0.5 1.5 3 -2 16 97"
    );
    assert_eq!(render("{{.}}", &json!(1e6)).unwrap(), "1e+06");
    assert_eq!(render("{{.}}", &json!(123456.0)).unwrap(), "123456");
    assert_eq!(render("{{.}}", &json!(0.00001)).unwrap(), "1e-05");
    // A missing key prints <no value>, as for Go's map[string]interface{}; so does null.
    assert_eq!(
        run("{{.Nope}}|{{.State.Nope}}|{{.Nope.Deeper}}"),
        "<no value>|<no value>|<no value>"
    );
    assert_eq!(run("{{.Config.Entrypoint}}"), "<no value>");
    // ... but as a function argument it is nil.
    assert_eq!(run("{{println .Nope}}"), "<nil>\n");
    assert_eq!(run("{{json .Nope}}"), "null");
    assert_eq!(run("{{print 1 2 \"a\" 3 \"b\" \"c\"}}"), "1 2a3bc");
}

#[test]
fn printf_verbs() {
    assert_eq!(
        run(r#"{{printf "%s-%d-%v-%q" .Image .State.Pid .Args .Name}}"#),
        r#"debian:bookworm-42-[-c sleep 1000]-"/My-Container""#
    );
    assert_eq!(
        run(r#"{{printf "%-8s|%5d|%05d|%.2f|%x|%t|%%" "ab" 7 -7 .Ratio 255 true}}"#),
        "ab      |    7|-0007|0.50|ff|true|%"
    );
    assert_eq!(
        run(r#"{{printf "%d %s" "x"}}"#),
        "%!d(string=x) %!s(MISSING)"
    );
    assert_eq!(run(r#"{{printf "%s" "x" 1}}"#), "x%!(EXTRA int=1)");
    assert_eq!(run(r#"{{printf "%q" "a\"b\n"}}"#), r#""a\"b\n""#);
}

#[test]
fn control_structures() {
    assert_eq!(run("{{if .State.Running}}up{{else}}down{{end}}"), "up");
    assert_eq!(
        run("{{if .Nope}}a{{else if .Config.Env}}b{{else}}c{{end}}"),
        "b"
    );
    assert_eq!(
        run(r#"{{if eq .State.Status "exited" "running"}}yes{{end}}"#),
        "yes"
    );
    assert_eq!(
        run(r#"{{if and .State.Running (gt .State.Pid 1) (not .Nope)}}ok{{end}}"#),
        "ok"
    );
    assert_eq!(run(r#"{{or .Nope "default"}} {{and 1 0}}"#), "default 0");
    assert_eq!(
        run("{{with .State}}{{.Status}}{{end}}{{with .Nope}}x{{else}}none{{end}}"),
        "runningnone"
    );
    assert_eq!(
        run("{{with .Nope}}x{{else with .State}}{{.Pid}}{{end}}"),
        "42"
    );
    assert_eq!(
        run("{{range $i, $e := .Config.Env}}{{$i}}={{$e}};{{end}}"),
        "0=PATH=/usr/bin;1=TERM=xterm;"
    );
    assert_eq!(
        run("{{range $k, $v := .Config.Labels}}{{$k}}:{{$v}} {{end}}"),
        "b:2 com.example.version:1.0 "
    );
    assert_eq!(run("{{range .Nope}}x{{else}}empty{{end}}"), "empty");
    assert_eq!(
        run("{{range $i := 4}}{{if eq $i 2}}{{break}}{{end}}{{$i}}{{end}}"),
        "01"
    );
    assert_eq!(
        run("{{range 4}}{{if eq . 1}}{{continue}}{{end}}{{.}}{{end}}"),
        "023"
    );
    assert_eq!(
        run("{{$x := .State.Pid}}{{$x}} {{$x = 7}}{{$x}} {{$.Image}}"),
        "42 7 debian:bookworm"
    );
    assert_eq!(
        run("{{range .Config.Env}}{{$.State.Status}} {{end}}"),
        "running running "
    );
    assert_eq!(
        run("{{.State.Pid | printf \"%05d\"}} {{.Config.Env | len}}"),
        "00042 2"
    );
    assert_eq!(
        run("a  {{- .State.Pid -}}  b {{/* a comment */}}c {{- /* trimmed */ -}} d"),
        "a42b cd"
    );
    assert_eq!(
        run("{{lt 1 2}} {{le 2 2}} {{gt \"b\" \"a\"}} {{ge 1 2}} {{ne .Image \"x\"}}"),
        "true true true false true"
    );
    assert_eq!(
        run("{{slice .Image 0 6}} {{index .Args 1}}"),
        "debian sleep 1000"
    );
    assert_eq!(run("{{`raw\\n`}}"), "raw\\n");
}

#[test]
fn errors_read_as_go_writes_them() {
    assert_eq!(
        fails("{{.Config.Entrypoint.X}}"),
        r#"template: :1:2: executing "" at <.Config.Entrypoint.X>: nil pointer evaluating interface {}.X"#
    );
    assert_eq!(
        fails("x\n {{.Image.Tag}}"),
        r#"template: :2:3: executing "" at <.Image.Tag>: can't evaluate field Tag in type string"#
    );
    assert_eq!(
        fails("{{index .Args 5}}"),
        r#"template: :1:2: executing "" at <index>: error calling index: index out of range: 5"#
    );
    assert_eq!(
        fails("{{nope .}}"),
        r#"template: :1: function "nope" not defined"#
    );
    assert_eq!(fails("{{$y}}"), r#"template: :1: undefined variable "$y""#);
    assert!(fails("{{if .A}}").contains("unexpected EOF"));
    assert!(fails("{{end}}").contains("unexpected {{end}}"));
    assert!(fails("{{.A").contains("unclosed action"));
    assert!(fails("{{lower 1}}").contains("wrong type for value; expected string; got int"));
    assert!(fails("{{eq .Image 1}}").contains("incompatible types for comparison"));
    assert!(fails("{{range .Image}}{{end}}").contains("range can't iterate over debian:bookworm"));
    assert!(fails("{{break}}").contains("outside {{range}}"));
    assert!(fails(r#"{{.Image "x"}}"#).contains("Image is not a method but has arguments"));
    assert!(fails("{{define \"x\"}}{{end}}").contains("not supported"));
}

#[test]
fn work_is_bounded() {
    assert!(fails("{{range 100000000}}x{{end}}").contains("steps"));
    assert!(fails("{{range 900000}}{{range 900000}}{{end}}{{end}}").contains("steps"));
    assert!(fails("{{pad \"x\" 100000000 0}}").contains("longer than"));
    let big = "{{range 1000000}}xxxxxxxxxx{{end}}";
    let e = render(big, &json!(null)).unwrap_err().to_string();
    assert!(
        e.contains(&format!("{MAX_OUTPUT}")) || e.contains("steps"),
        "{e}"
    );
    let deep = "{{(".repeat(100) + &")".repeat(100) + "}}";
    assert!(render(&deep, &json!(null)).is_err());
    let nested = "{{if 1}}".repeat(100) + &"{{end}}".repeat(100);
    assert!(
        render(&nested, &json!(null))
            .unwrap_err()
            .to_string()
            .contains("nested deeper")
    );
}

fn ps_header() -> Value {
    json!({"ID": "CONTAINER ID", "Image": "IMAGE", "Names": "NAMES", "Status": "STATUS", "Labels": "LABELS"})
}

fn ps_rows() -> Vec<Value> {
    vec![
        json!({"ID": "a1b2c3d4e5f6", "Image": "debian", "Names": "web", "Status": "Up 2 minutes", "Labels": ""}),
        json!({"ID": "0f9e8d7c6b5a", "Image": "busybox:latest", "Names": "db-server-long-name", "Status": "Exited (0)", "Labels": "a=b"}),
    ]
}

#[test]
fn table_aligns_as_docker() {
    // docker ps --format "table {{.ID}}\t{{.Image}}\t{{.Names}}" (a literal \t, as a shell passes it)
    let f = ListFormat::new(r"table {{.ID}}\t{{.Image}}\t{{.Names}}", "");
    let out = render_list(&f, &ps_header(), &ps_rows()).unwrap();
    assert_eq!(
        out,
        "CONTAINER ID   IMAGE            NAMES\n\
         a1b2c3d4e5f6   debian           web\n\
         0f9e8d7c6b5a   busybox:latest   db-server-long-name\n"
    );
    // Columns are at least 10 wide.
    let f = ListFormat::new("table {{.Names}}\t{{.ID}}", "");
    let out = render_list(
        &f,
        &json!({"Names": "NAMES", "ID": "ID"}),
        &[json!({"Names": "a", "ID": "x"})],
    )
    .unwrap();
    assert_eq!(out, "NAMES     ID\na         x\n");
    // Header functions leave titles alone; pad is not one of them.
    let f = ListFormat::new("table {{lower .Names}}\t{{pad .Image 1 0}}", "");
    let out = render_list(&f, &ps_header(), &ps_rows()[..1]).unwrap();
    assert_eq!(out, "NAMES      IMAGE\nweb        debian\n");
    // The header prints with no rows.
    let f = ListFormat::new("table {{.ID}}", "");
    assert_eq!(
        render_list(&f, &ps_header(), &[]).unwrap(),
        "CONTAINER ID\n"
    );
    // `table` alone is the default table.
    let f = ListFormat::new("table", "table {{.Names}}\\t{{.Status}}");
    assert_eq!(f, ListFormat::Table("{{.Names}}\t{{.Status}}".into()));
}

#[test]
fn json_and_plain_formats() {
    let f = ListFormat::new("json", "");
    let out = render_list(&f, &ps_header(), &ps_rows()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        r#"{"ID":"a1b2c3d4e5f6","Image":"debian","Labels":"","Names":"web","Status":"Up 2 minutes"}"#
    );
    let f = ListFormat::new("{{.Names}}", "");
    assert_eq!(
        render_list(&f, &ps_header(), &ps_rows()).unwrap(),
        "web\ndb-server-long-name\n"
    );
    let f = ListFormat::new(r"{{.ID}}: {{.Status}}\n", "");
    assert_eq!(
        render_list(&f, &ps_header(), &ps_rows()[..1]).unwrap(),
        "a1b2c3d4e5f6: Up 2 minutes\n\n"
    );
    // Rows are typed, as Docker's: an unknown field is an error.
    let f = ListFormat::new("{{.Nope}}", "");
    let e = render_list(&f, &ps_header(), &ps_rows()).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"template: :1:2: executing "" at <.Nope>: map has no entry for key "Nope""#
    );
    let e = render_list(&ListFormat::new("{{.ID", ""), &ps_header(), &ps_rows()).unwrap_err();
    assert!(matches!(e, TemplateError::Parse { .. }));
    assert!(
        e.docker_message()
            .starts_with("template parsing error: template: :1:")
    );
}

#[test]
fn tabwriter_blocks_end_at_lines_without_cells() {
    assert_eq!(
        tabwrite("a\tb\nlonger line\nccc\td\n"),
        "a         b\nlonger line\nccc       d\n"
    );
    assert_eq!(
        tabwrite("x\ty\tz\nxx\ty"),
        "x         y         z\nxx        y"
    );
}

/// A cheap stand-in for the fuzz target in `cargo test`: token soup from a fixed seed
/// never panics and stays within the output bound.
#[test]
fn token_soup_never_panics() {
    let pieces = [
        "{{", "}}", "{{-", " -}}", ".", ".State", ".Args", "$", "$x", ":=", "=", "|", "(", ")",
        " ", "if", "else", "end", "range", "with", "break", "continue", "json", "len", "index",
        "printf", "\"%s%d\"", "println", "eq", "and", "or", "not", "pad", "truncate", "split",
        "join", "1", "-1", "0", "1e3", "'a'", "\"x\"", "`r`", "nil", "true", ",", "$i", "/*", "*/",
        "slice", "lt", "title", "100",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let data = container();
    for _ in 0..20_000 {
        let n = (next() % 24) as usize;
        let text: String = (0..n)
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect();
        if let Ok(t) = super::Template::parse(&text) {
            for strict in [false, true] {
                if let Ok(out) = t.execute_with(&data, super::Functions::Normal, strict) {
                    assert!(out.len() <= MAX_OUTPUT, "{text}");
                }
            }
        }
    }
}
