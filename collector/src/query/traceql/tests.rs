use super::*;

// ------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------

fn q(s: &str) -> Query {
    parse(s).unwrap_or_else(|e| panic!("{s:?} should parse, got: {e}"))
}

fn expr(s: &str) -> FieldExpr {
    match q(s) {
        Query::Filter(Filter { expr: Some(e) }) => e,
        other => panic!("{s:?}: expected a single non-empty filter, got {other:?}"),
    }
}

fn cmp(s: &str) -> Comparison {
    match expr(s) {
        FieldExpr::Cmp(c) => c,
        other => panic!("{s:?}: expected a single comparison, got {other:?}"),
    }
}

fn value(s: &str) -> Literal {
    cmp(s).value
}

fn err(s: &str) -> ParseError {
    match parse(s) {
        Ok(q) => panic!("{s:?} should fail, parsed as {q:?}"),
        Err(e) => e,
    }
}

/// Asserts the error's position and that its message contains `needle`.
#[track_caller]
fn assert_err(s: &str, line: usize, col: usize, needle: &str) {
    let e = err(s);
    assert_eq!((e.line, e.col), (line, col), "position of error for {s:?}: {e}");
    assert!(
        e.message.contains(needle),
        "message for {s:?} should contain {needle:?}, got: {}",
        e.message
    );
    // offset and line/col agree
    assert_eq!(ParseError::new(s, e.offset, ""), ParseError { message: String::new(), ..e });
}

fn any(name: &str) -> Attribute {
    Attribute::Scoped { scope: Scope::Any, name: name.to_string() }
}

fn span(name: &str) -> Attribute {
    Attribute::Scoped { scope: Scope::Span, name: name.to_string() }
}

fn res(name: &str) -> Attribute {
    Attribute::Scoped { scope: Scope::Resource, name: name.to_string() }
}

fn c(attr: Attribute, op: CmpOp, value: Literal) -> FieldExpr {
    FieldExpr::Cmp(Comparison { attr, op, value })
}

fn eq_int(name: &str, i: i64) -> FieldExpr {
    c(any(name), CmpOp::Eq, Literal::Int(i))
}

fn and(a: FieldExpr, b: FieldExpr) -> FieldExpr {
    FieldExpr::And(Box::new(a), Box::new(b))
}

fn or(a: FieldExpr, b: FieldExpr) -> FieldExpr {
    FieldExpr::Or(Box::new(a), Box::new(b))
}

fn not(a: FieldExpr) -> FieldExpr {
    FieldExpr::Not(Box::new(a))
}

fn f(e: FieldExpr) -> Query {
    Query::Filter(Filter { expr: Some(e) })
}

fn qand(a: Query, b: Query) -> Query {
    Query::And(Box::new(a), Box::new(b))
}

fn qor(a: Query, b: Query) -> Query {
    Query::Or(Box::new(a), Box::new(b))
}

// ------------------------------------------------------------------
// filters and literals
// ------------------------------------------------------------------

#[test]
fn empty_filter_matches_all_spans() {
    assert_eq!(q("{}"), Query::Filter(Filter { expr: None }));
    assert_eq!(q("  {  \n }  "), Query::Filter(Filter { expr: None }));
}

#[test]
fn whitespace_is_optional_and_allowed_anywhere() {
    let compact = q(r#"{.a=1&&span.b!="x"}"#);
    let spaced = q("\n{\t.a\n=\r\n1 &&\n span.b  !=  \"x\"\n}\n");
    assert_eq!(compact, spaced);
}

#[test]
fn double_quoted_string_with_escapes() {
    assert_eq!(value(r#"{ .a = "q\"b\\s\nn\tt" }"#), Literal::String("q\"b\\s\nn\tt".into()));
    assert_eq!(value(r#"{ .a = "" }"#), Literal::String(String::new()));
    assert_eq!(value(r#"{ .a = "日本 ✓" }"#), Literal::String("日本 ✓".into()));
}

#[test]
fn backtick_string_is_raw() {
    assert_eq!(value(r#"{ .a =~ `^\d+\.x"y$` }"#), Literal::String(r#"^\d+\.x"y$"#.into()));
}

#[test]
fn integers_including_negative_and_extremes() {
    assert_eq!(value("{ .a = 42 }"), Literal::Int(42));
    assert_eq!(value("{ .a = -7 }"), Literal::Int(-7));
    assert_eq!(value("{ .a = 0 }"), Literal::Int(0));
    assert_eq!(value("{ .a = 9223372036854775807 }"), Literal::Int(i64::MAX));
    assert_eq!(value("{ .a = -9223372036854775808 }"), Literal::Int(i64::MIN));
}

#[test]
fn floats_with_fraction_and_exponent() {
    assert_eq!(value("{ .a = 1.5 }"), Literal::Float(1.5));
    assert_eq!(value("{ .a = -0.25 }"), Literal::Float(-0.25));
    assert_eq!(value("{ .a = 1e3 }"), Literal::Float(1000.0));
    assert_eq!(value("{ .a = 2.5E-2 }"), Literal::Float(0.025));
    assert_eq!(value("{ .a = -1e+2 }"), Literal::Float(-100.0));
}

#[test]
fn booleans_and_nil() {
    assert_eq!(value("{ .a = true }"), Literal::Bool(true));
    assert_eq!(value("{ .a != false }"), Literal::Bool(false));
    assert_eq!(value("{ .a = nil }"), Literal::Nil);
}

#[test]
fn durations_in_every_unit() {
    let cases = [
        ("100ms", 100_000_000),
        ("1.5s", 1_500_000_000),
        ("2m", 120_000_000_000),
        ("1h", 3_600_000_000_000),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("250μs", 250_000),
        ("10ns", 10),
        ("1m30s", 90_000_000_000),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
        ("-5s", -5_000_000_000),
        ("0.5ms", 500_000),
    ];
    for (text, nanos) in cases {
        assert_eq!(value(&format!("{{ duration > {text} }}")), Literal::Duration(nanos), "{text}");
        assert_eq!(value(&format!("{{ .a = {text} }}")), Literal::Duration(nanos), "{text}");
    }
}

#[test]
fn integer_compared_with_duration_intrinsic_is_nanoseconds() {
    assert_eq!(value("{ duration > 1500 }"), Literal::Duration(1500));
    assert_eq!(value("{ traceDuration <= 7 }"), Literal::Duration(7));
    // but stays an integer for ordinary attributes
    assert_eq!(value("{ .duration > 1500 }"), Literal::Int(1500));
}

#[test]
fn status_keywords() {
    assert_eq!(value("{ status = error }"), Literal::Status(StatusLit::Error));
    assert_eq!(value("{ status = ok }"), Literal::Status(StatusLit::Ok));
    assert_eq!(value("{ status != unset }"), Literal::Status(StatusLit::Unset));
    assert_eq!(StatusLit::Unset.code(), 0);
    assert_eq!(StatusLit::Ok.code(), 1);
    assert_eq!(StatusLit::Error.code(), 2);
}

#[test]
fn kind_keywords() {
    let cases = [
        ("unspecified", KindLit::Unspecified, 0),
        ("internal", KindLit::Internal, 1),
        ("server", KindLit::Server, 2),
        ("client", KindLit::Client, 3),
        ("producer", KindLit::Producer, 4),
        ("consumer", KindLit::Consumer, 5),
    ];
    for (kw, lit, code) in cases {
        assert_eq!(
            cmp(&format!("{{ kind = {kw} }}")),
            Comparison {
                attr: Attribute::Intrinsic(Intrinsic::Kind),
                op: CmpOp::Eq,
                value: Literal::Kind(lit)
            }
        );
        assert_eq!(lit.code(), code);
    }
}

#[test]
fn status_and_kind_compare_with_nil() {
    assert_eq!(value("{ status = nil }"), Literal::Nil);
    assert_eq!(value("{ kind != nil }"), Literal::Nil);
}

// ------------------------------------------------------------------
// attributes
// ------------------------------------------------------------------

#[test]
fn intrinsics_in_both_spellings_map_to_the_same_variant() {
    let cases = [
        ("name", "span:name", Intrinsic::Name, "\"x\""),
        ("status", "span:status", Intrinsic::Status, "error"),
        ("statusMessage", "span:statusMessage", Intrinsic::StatusMessage, "\"x\""),
        ("kind", "span:kind", Intrinsic::Kind, "server"),
        ("duration", "span:duration", Intrinsic::Duration, "1s"),
        ("rootName", "trace:rootName", Intrinsic::RootName, "\"x\""),
        ("rootServiceName", "trace:rootService", Intrinsic::RootServiceName, "\"x\""),
        ("traceDuration", "trace:duration", Intrinsic::TraceDuration, "1s"),
    ];
    for (old, new, intrinsic, lit) in cases {
        let a = cmp(&format!("{{ {old} = {lit} }}"));
        let b = cmp(&format!("{{ {new} = {lit} }}"));
        assert_eq!(a.attr, Attribute::Intrinsic(intrinsic), "{old}");
        assert_eq!(a, b, "{old} vs {new}");
        assert_eq!(a.attr.tag_name(), old);
    }
}

#[test]
fn scoped_attribute_names_with_dots_digits_and_punctuation() {
    assert_eq!(cmp(r#"{ resource.service.name = "api" }"#).attr, res("service.name"));
    assert_eq!(cmp(r#"{ span.http.request.method = "GET" }"#).attr, span("http.request.method"));
    assert_eq!(cmp("{ .a_b-c/d:e.1 = 1 }").attr, any("a_b-c/d:e.1"));
    assert_eq!(cmp("{ .5xx = 1 }").attr, any("5xx"));
    assert_eq!(cmp("{ .日本 = 1 }").attr, any("日本"));
    // names end at operators even without whitespace
    assert_eq!(expr("{.a=1&&.b!=2}"), and(eq_int("a", 1), c(any("b"), CmpOp::Ne, Literal::Int(2))));
}

#[test]
fn quoted_attribute_names() {
    assert_eq!(cmp(r#"{ span."foo bar" = 1 }"#).attr, span("foo bar"));
    assert_eq!(cmp(r#"{ ."x y" = 1 }"#).attr, any("x y"));
    assert_eq!(cmp(r#"{ resource."a\"b" = 1 }"#).attr, res("a\"b"));
    assert_eq!(cmp(r#"{ .`raw\name` = 1 }"#).attr, any(r"raw\name"));
}

#[test]
fn bare_attribute_means_exists() {
    assert_eq!(
        cmp("{ .foo }"),
        Comparison { attr: any("foo"), op: CmpOp::Ne, value: Literal::Nil }
    );
    assert_eq!(
        expr("{ span.a && resource.b }"),
        and(c(span("a"), CmpOp::Ne, Literal::Nil), c(res("b"), CmpOp::Ne, Literal::Nil))
    );
}

#[test]
fn tag_names_are_canonical_and_reversible() {
    let cases = [
        (Attribute::Intrinsic(Intrinsic::Name), "name"),
        (Attribute::Intrinsic(Intrinsic::Status), "status"),
        (Attribute::Intrinsic(Intrinsic::Duration), "duration"),
        (Attribute::Intrinsic(Intrinsic::RootServiceName), "rootServiceName"),
        (res("service.name"), "resource.service.name"),
        (span("http.method"), "span.http.method"),
        (any("foo"), ".foo"),
    ];
    for (attr, tag) in cases {
        assert_eq!(attr.tag_name(), tag);
        assert_eq!(Attribute::from_tag_name(tag), Some(attr));
    }
    assert_eq!(
        Attribute::from_tag_name("trace:rootService"),
        Some(Attribute::Intrinsic(Intrinsic::RootServiceName))
    );
    assert_eq!(Attribute::from_tag_name("foo"), None);
    assert_eq!(Attribute::from_tag_name("span."), None);
}

// ------------------------------------------------------------------
// operators, precedence, parentheses
// ------------------------------------------------------------------

#[test]
fn every_comparison_operator() {
    let cases = [
        ("=", CmpOp::Eq),
        ("!=", CmpOp::Ne),
        (">", CmpOp::Gt),
        (">=", CmpOp::Ge),
        ("<", CmpOp::Lt),
        ("<=", CmpOp::Le),
        ("=~", CmpOp::Match),
        ("!~", CmpOp::NotMatch),
    ];
    for (text, op) in cases {
        assert_eq!(cmp(&format!("{{ .a {text} \"x\" }}")).op, op, "{text}");
    }
}

#[test]
fn and_binds_tighter_than_or_in_filters() {
    assert_eq!(
        expr("{ .a = 1 || .b = 2 && .c = 3 }"),
        or(eq_int("a", 1), and(eq_int("b", 2), eq_int("c", 3)))
    );
    assert_eq!(
        expr("{ .a = 1 && .b = 2 || .c = 3 }"),
        or(and(eq_int("a", 1), eq_int("b", 2)), eq_int("c", 3))
    );
}

#[test]
fn chains_are_left_associative() {
    assert_eq!(
        expr("{ .a = 1 && .b = 2 && .c = 3 }"),
        and(and(eq_int("a", 1), eq_int("b", 2)), eq_int("c", 3))
    );
    assert_eq!(
        expr("{ .a = 1 || .b = 2 || .c = 3 }"),
        or(or(eq_int("a", 1), eq_int("b", 2)), eq_int("c", 3))
    );
}

#[test]
fn parentheses_override_precedence_in_filters() {
    assert_eq!(
        expr("{ (.a = 1 || .b = 2) && .c = 3 }"),
        and(or(eq_int("a", 1), eq_int("b", 2)), eq_int("c", 3))
    );
    assert_eq!(expr("{ (((.a = 1))) }"), eq_int("a", 1));
}

#[test]
fn negation_of_parenthesised_expression() {
    assert_eq!(
        expr("{ !(.a = 1 || .b = 2) && .c = 3 }"),
        and(not(or(eq_int("a", 1), eq_int("b", 2))), eq_int("c", 3))
    );
    assert_eq!(expr("{ !!(.a = 1) }"), not(not(eq_int("a", 1))));
}

#[test]
fn negation_requires_parentheses() {
    assert_err("{ !.a = 1 }", 1, 4, "expected '(' after '!'");
}

#[test]
fn spansets_combine_with_and_or_and_parentheses() {
    let a = f(eq_int("a", 1));
    let b = f(eq_int("b", 2));
    let n = f(c(Attribute::Intrinsic(Intrinsic::Name), CmpOp::Eq, Literal::String("x".into())));
    assert_eq!(
        q(r#"({ .a = 1 } || { .b = 2 }) && { name = "x" }"#),
        qand(qor(a.clone(), b.clone()), n.clone())
    );
    assert_eq!(
        q(r#"{ .a = 1 } || { .b = 2 } && { name = "x" }"#),
        qor(a.clone(), qand(b.clone(), n.clone()))
    );
    assert_eq!(
        q("{ .a = 1 } && { .b = 2 } && { }"),
        qand(qand(a, b), Query::Filter(Filter { expr: None }))
    );
}

#[test]
fn literal_on_the_left_flips_the_operator() {
    assert_eq!(
        cmp("{ 500 <= span.http.status_code }"),
        Comparison { attr: span("http.status_code"), op: CmpOp::Ge, value: Literal::Int(500) }
    );
    let cases = [
        ("=", CmpOp::Eq),
        ("!=", CmpOp::Ne),
        (">", CmpOp::Lt),
        (">=", CmpOp::Le),
        ("<", CmpOp::Gt),
        ("<=", CmpOp::Ge),
    ];
    for (text, op) in cases {
        assert_eq!(cmp(&format!("{{ 1 {text} .a }}")).op, op, "{text}");
    }
    assert_eq!(cmp("{ error = status }"), cmp("{ status = error }"));
    assert_eq!(value("{ 1s < duration }"), Literal::Duration(1_000_000_000));
}

// ------------------------------------------------------------------
// errors, with exact positions
// ------------------------------------------------------------------

#[test]
fn empty_query_is_an_error() {
    assert_err("", 1, 1, "empty query");
    assert_err("  \n ", 1, 1, "empty query");
}

#[test]
fn missing_value_points_at_the_closing_brace() {
    assert_err("{ .a = }", 1, 8, "expected a value after '='");
    assert!(err("{ .a = }").message.ends_with("found '}'"));
    assert_err("{ .a = ", 1, 8, "found end of input");
}

#[test]
fn unclosed_brace_points_at_the_opening_brace() {
    assert_err("{ .a = 1", 1, 1, "unclosed '{'");
    assert_err("{ .a = 1 } && {", 1, 15, "unclosed '{'");
    assert_err("{ .a = 1 } &&\n  { .b = 2", 2, 3, "unclosed '{'");
}

#[test]
fn unclosed_parentheses() {
    assert_err("({ .a = 1 }", 1, 1, "unclosed '('");
    assert_err("{ (.a = 1 }", 1, 11, "expected '&&', '||' or ')', found '}'");
    assert_err("{ (.a = 1", 1, 3, "unclosed '('");
    assert_err("{ } )", 1, 5, "unmatched ')'");
}

#[test]
fn bare_identifier_is_not_an_attribute() {
    assert_err("{ foo = 1 }", 1, 3, "unknown identifier 'foo'");
    let e = err("{ foo = 1 }");
    assert!(e.message.contains("'.foo'"), "{}", e.message);
    // as a value, the hint is about quoting
    assert_err("{ .a = foo }", 1, 8, "a string value must be quoted (\"foo\")");
}

#[test]
fn unsupported_scopes_and_intrinsics() {
    assert_err("{ event.name = 1 }", 1, 3, "unsupported attribute scope 'event.'");
    assert_err("{ span:id = \"x\" }", 1, 3, "unsupported intrinsic 'span:id'");
    assert_err("{ trace:id = \"x\" }", 1, 3, "unsupported intrinsic 'trace:id'");
    assert_err("{ span. = 1 }", 1, 3, "expected an attribute name right after 'span.'");
    assert_err("{ . = 1 }", 1, 3, "expected an attribute name right after '.'");
    assert_err(r#"{ span."" = 1 }"#, 1, 8, "must not be empty");
}

#[test]
fn bad_regex_reports_the_regex_error_at_the_string() {
    let e = err(r#"{ name =~ "(unclosed" }"#);
    assert_eq!((e.line, e.col), (1, 11));
    assert!(e.message.contains("invalid regular expression"), "{}", e.message);
    assert!(e.message.contains("unclosed group"), "{}", e.message);
    assert!(!e.message.contains('\n'), "{}", e.message);
}

#[test]
fn regex_operators_need_a_string_on_the_right() {
    assert_err("{ .a =~ 1 }", 1, 9, "needs a string");
    assert_err("{ .a !~ nil }", 1, 6, "nil can only be compared with '=' or '!='");
    assert_err(r#"{ "x" =~ .a }"#, 1, 7, "right-hand side of '=~'");
    assert_err(r#"{ status =~ "err" }"#, 1, 10, "cannot be matched");
    assert_eq!(
        cmp(r#"{ name !~ "GET .*" }"#),
        Comparison {
            attr: Attribute::Intrinsic(Intrinsic::Name),
            op: CmpOp::NotMatch,
            value: Literal::String("GET .*".into())
        }
    );
}

#[test]
fn status_compares_only_with_status_keywords_and_equality() {
    assert_err(
        "{ status = 2 }",
        1,
        12,
        "'status' can only be compared with ok, error, unset or nil",
    );
    assert_err("{ status = \"error\" }", 1, 12, "found string \"error\"");
    assert_err("{ status > ok }", 1, 10, "'status' can only be compared with '=' or '!='");
    assert_err("{ status = server }", 1, 12, "kind keyword");
}

#[test]
fn status_keyword_only_with_status() {
    assert_err(
        "{ .foo = error }",
        1,
        10,
        "status keyword 'error' can only be compared with 'status'",
    );
    assert_err("{ name = ok }", 1, 10, "'name' is a string");
    assert_err("{ error = .foo }", 1, 3, "status keyword 'error'");
}

#[test]
fn kind_compares_only_with_kind_keywords_and_equality() {
    assert_err("{ kind = 2 }", 1, 10, "'kind' can only be compared with unspecified");
    assert_err("{ kind <= client }", 1, 8, "'kind' can only be compared with '=' or '!='");
    assert_err(
        "{ span.kind = server }",
        1,
        15,
        "kind keyword 'server' can only be compared with 'kind'",
    );
}

#[test]
fn duration_intrinsics_need_durations_or_integers() {
    assert_err("{ duration > \"1s\" }", 1, 14, "'duration' can only be compared with a duration");
    assert_err("{ traceDuration > 1.5 }", 1, 19, "'traceDuration' can only be compared");
}

#[test]
fn string_intrinsics_need_strings() {
    assert_err("{ name = 1 }", 1, 10, "'name' is a string");
    assert_err("{ rootServiceName = true }", 1, 21, "found boolean 'true'");
}

#[test]
fn nil_and_booleans_only_with_equality() {
    assert_err("{ .a > nil }", 1, 6, "nil can only be compared with '=' or '!='");
    assert_err("{ .a >= true }", 1, 6, "a boolean can only be compared with '=' or '!='");
}

#[test]
fn two_attributes_or_two_values_are_rejected() {
    assert_err("{ .a = .b }", 1, 8, "comparing two attributes is not supported");
    assert_err("{ name = span.b }", 1, 10, "comparing two attributes");
    assert_err("{ 1 = 2 }", 1, 3, "comparing two values is not supported");
    assert_err("{ 1 }", 1, 5, "expected a comparison operator");
}

#[test]
fn missing_operator_after_attribute() {
    assert_err("{ .a 1 }", 1, 6, "expected a comparison operator (=, !=");
    assert_err("{ .a = 1 .b = 2 }", 1, 10, "expected '&&', '||' or '}', found '.b'");
}

#[test]
fn pipelines_are_unsupported_with_position() {
    assert_err("{ } | count() > 2", 1, 5, "unsupported: pipelines");
    assert_err("{ .a = 1 } | select(.b)", 1, 12, "unsupported: pipelines");
    assert_err("({ } | count() > 1) && { }", 1, 6, "unsupported: pipelines");
    assert_err("{ .a = 1 | .b = 2 }", 1, 10, "found '|' (did you mean '||'?)");
}

#[test]
fn structural_operators_are_unsupported() {
    assert_err("{ } >> { }", 1, 5, "structural operator '>>'");
    assert_err("{ } ~ { }", 1, 5, "structural operator '~'");
    assert_err("{ } !> { }", 1, 5, "structural operator '!>'");
    assert_err("{ } &>> { }", 1, 5, "structural operator '&>>'");
}

#[test]
fn trailing_garbage_after_query() {
    assert_err("{ } { }", 1, 5, "expected '&&', '||' or end of input, found '{'");
    assert_err(".a = 1", 1, 1, "expected '{' to start a spanset filter");
}

#[test]
fn lexical_errors() {
    assert_err("{ .a == 1 }", 1, 6, "use '=' to test equality");
    assert_err("{ .a = 1 # }", 1, 10, "unexpected character '#'");
    assert_err(r#"{ .a = "abc }"#, 1, 8, "unterminated string");
    assert_err("{ .a = `abc }", 1, 8, "unterminated string");
    assert_err(r#"{ .a = "x\qy" }"#, 1, 10, "unknown escape sequence '\\q'");
    assert_err("{ .a = 1d }", 1, 8, "invalid duration '1d'");
    assert_err("{ .a = 1.2.3 }", 1, 8, "invalid number '1.2.3'");
    assert_err("{ .a = 99999999999999999999 }", 1, 8, "out of range");
    assert_err("{ .a = 1e999 }", 1, 8, "out of range");
    assert_err("{ .a = - 1 }", 1, 8, "unexpected '-'");
    assert_err(
        "{ .a = 1 & .b = 2 }",
        1,
        10,
        "expected '&&', '||' or '}', found '&' (did you mean '&&'?)",
    );
}

#[test]
fn positions_count_lines_and_multibyte_characters() {
    // col is in characters: "日本" is 2 columns but 6 bytes
    let e = err("{ .日本 = }");
    assert_eq!((e.line, e.col, e.offset), (1, 9, 12));
    let e = err("{\n  .a = 1 &&\n  .b = \n}");
    assert_eq!((e.line, e.col), (4, 1));
    assert_eq!(
        e.to_string(),
        "parse error at line 4, col 1: expected a value after '=' (a string, number, duration, true, false, nil, or a status or kind keyword), found '}'"
    );
}

#[test]
fn excessive_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}{{ }}{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(err(&deep).message.contains("too complex"));
    let deep = format!("{{ {}.a = 1 }}", "!(".repeat(10_000));
    assert!(err(&deep).message.contains("too complex"));
    let long_chain = format!("{{ {} }}", vec![".a = 1"; 10_000].join(" && "));
    assert!(err(&long_chain).message.contains("too complex"));
    // moderately large queries are fine
    let ok_chain = format!("{{ {} }}", vec![".a = 1"; 200].join(" || "));
    assert!(parse(&ok_chain).is_ok());
    let ok_nesting = format!("{}{{ }}{}", "(".repeat(50), ")".repeat(50));
    assert!(parse(&ok_nesting).is_ok());
}

// ------------------------------------------------------------------
// Go durations
// ------------------------------------------------------------------

#[test]
fn go_durations() {
    let cases: [(&str, Option<i64>); 26] = [
        ("0", Some(0)),
        ("-0", Some(0)),
        ("1m0s", Some(60_000_000_000)),
        ("100ms", Some(100_000_000)),
        ("1.5s", Some(1_500_000_000)),
        ("2h45m", Some(9_900_000_000_000)),
        ("+5s", Some(5_000_000_000)),
        ("-1.5h", Some(-5_400_000_000_000)),
        (".5s", Some(500_000_000)),
        ("1.s", Some(1_000_000_000)),
        ("1µs", Some(1_000)),
        ("1μs", Some(1_000)),
        ("1us", Some(1_000)),
        ("3ns", Some(3)),
        ("1.0000000001s", Some(1_000_000_000)),
        ("9223372036854775807ns", Some(i64::MAX)),
        ("-9223372036854775808ns", Some(i64::MIN)),
        ("9223372036854775808ns", None),
        ("2562048h", None),
        ("", None),
        ("1", None),
        ("s", None),
        (".s", None),
        ("1d", None),
        ("1s ", None),
        ("1ss", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_duration(text), want, "{text:?}");
    }
}

// ------------------------------------------------------------------
// Display round trip and robustness
// ------------------------------------------------------------------

#[test]
fn display_is_canonical_traceql_that_parses_back() {
    let queries = [
        r#"({ .a = 1 } || { .b = 2 }) && { name = "x" }"#,
        r#"{ resource.service.name = "api" && span.http.status_code >= 500 }"#,
        r#"{ !(.a = "q\"\\\n\t") || span."foo bar" =~ "x.*" }"#,
        "{ duration > 1m30s && traceDuration < 250us && kind = server && status != error }",
        "{ .f = -0.25 && .g = 1e300 && .h = true && .i = nil && .j }",
        "{ 500 <= span.code }",
        "{ }",
    ];
    for text in queries {
        let parsed = q(text);
        let printed = parsed.to_string();
        assert_eq!(q(&printed), parsed, "{text} printed as {printed}");
    }
    assert_eq!(
        q(r#"({ .a = 1 } || { .b = 2 }) && { name = "x" }"#).to_string(),
        r#"(({ .a = 1 } || { .b = 2 }) && { name = "x" })"#
    );
    assert_eq!(q("{ 500 <= span.code }").to_string(), "{ span.code >= 500 }");
}

/// xorshift64*: deterministic pseudo-random numbers without extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Checks the invariants of any parse result; panics (fails) if broken.
fn check_result(input: &str) {
    match parse(input) {
        Ok(query) => {
            let printed = query.to_string();
            assert_eq!(
                parse(&printed).as_ref(),
                Ok(&query),
                "round trip of {input:?} via {printed:?}"
            );
        }
        Err(e) => {
            assert!(e.offset <= input.len(), "{input:?}: {e:?}");
            assert!(input.is_char_boundary(e.offset), "{input:?}: {e:?}");
            assert!(!e.message.is_empty());
            let again = ParseError::new(input, e.offset, e.message.clone());
            assert_eq!(again, e, "{input:?}: line/col agree with offset");
        }
    }
}

const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "{ }",
    "(",
    ")",
    "&&",
    "||",
    "!",
    "=",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "=~",
    "!~",
    "|",
    "&",
    "~",
    ">>",
    ",",
    ".",
    ".a",
    ".b.c",
    "span.",
    "span.x",
    "resource.",
    "resource.y",
    "span:",
    "trace:",
    "span:name",
    "trace:duration",
    ":",
    "\"",
    "\"s\"",
    "`",
    "`r`",
    "\\",
    "\\\"",
    "a",
    "name",
    "status",
    "kind",
    "duration",
    "error",
    "ok",
    "server",
    "nil",
    "true",
    "1",
    "-",
    "-3",
    "0",
    "1.5",
    "e",
    "1e",
    "1e-",
    "+",
    "s",
    "ms",
    "µ",
    "μs",
    "1m30s",
    "99999999999999999999",
    "é",
    "日本",
    "😀",
    "\u{0}",
    " ",
    "  ",
    "\n",
    "\t",
    "\r\n",
    "| count() > 2",
    "#",
    "==",
];

#[test]
fn random_inputs_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut parsed_ok = 0;
    for _ in 0..30_000 {
        let len = rng.below(24);
        let mut s = String::new();
        for _ in 0..len {
            s.push_str(rng.pick(FRAGMENTS));
        }
        if parse(&s).is_ok() {
            parsed_ok += 1;
        }
        check_result(&s);
    }
    // a handful of random strings are valid queries too
    assert!(parsed_ok > 0);
}

#[test]
fn random_characters_never_panic() {
    let chars: Vec<char> = "{}()&|!=<>~.\"`\\ \n:-+_aes1059µμ日😀é#/,'\t".chars().collect();
    let mut rng = Rng(42);
    for _ in 0..30_000 {
        let len = rng.below(20);
        let s: String = (0..len).map(|_| rng.pick(&chars)).collect();
        check_result(&s);
    }
}

#[test]
fn every_prefix_and_suffix_of_valid_queries_is_handled() {
    let queries = [
        r#"({ .a = 1 } || { .b = 2 }) && { name = "x" }"#,
        r#"{ resource.service.name = "api" && span.http.status_code >= 500 }"#,
        r#"{ !(.a = "q\"\\\n\t") || span."foo bar" =~ "x.*" }"#,
        "{ duration > 1m30s && traceDuration < 250µs && kind = server && status != error }",
        "{ .f = -0.25 && .g = 1e-3 && .h = true && .i = nil && .j } | count() > 2",
        "{ 500 <= span.code && trace:rootService = `a\\b` && span:statusMessage != \"日本\" }",
    ];
    for text in queries {
        for (i, _) in text.char_indices() {
            check_result(&text[..i]);
            check_result(&text[i..]);
        }
    }
}

fn random_literal_for(rng: &mut Rng, attr: &Attribute) -> (CmpOp, Literal) {
    let equality = [CmpOp::Eq, CmpOp::Ne];
    let ordering = [CmpOp::Eq, CmpOp::Ne, CmpOp::Gt, CmpOp::Ge, CmpOp::Lt, CmpOp::Le];
    let strings = ["", "x", "a \"quoted\" \\ word", "tab\tnew\nline", "日本😀"];
    let regexes = ["x.*", "^GET /api/[0-9]+$", r"\d+", "(a|b)"];
    let durations = [0, 1, 999, 1_500_000_000, -42, i64::MAX, i64::MIN];
    let random_string = |rng: &mut Rng| Literal::String(rng.pick(&strings).to_string());
    if rng.below(10) == 0 {
        return (rng.pick(&equality), Literal::Nil);
    }
    match attr {
        Attribute::Intrinsic(Intrinsic::Status) => (
            rng.pick(&equality),
            Literal::Status(rng.pick(&[StatusLit::Unset, StatusLit::Ok, StatusLit::Error])),
        ),
        Attribute::Intrinsic(Intrinsic::Kind) => (
            rng.pick(&equality),
            Literal::Kind(rng.pick(&[
                KindLit::Unspecified,
                KindLit::Internal,
                KindLit::Server,
                KindLit::Client,
                KindLit::Producer,
                KindLit::Consumer,
            ])),
        ),
        Attribute::Intrinsic(Intrinsic::Duration | Intrinsic::TraceDuration) => {
            (rng.pick(&ordering), Literal::Duration(rng.pick(&durations)))
        }
        _ if rng.below(4) == 0 => (
            rng.pick(&[CmpOp::Match, CmpOp::NotMatch]),
            Literal::String(rng.pick(&regexes).to_string()),
        ),
        Attribute::Intrinsic(_) => (rng.pick(&ordering), random_string(rng)),
        Attribute::Scoped { .. } => match rng.below(6) {
            0 => (rng.pick(&ordering), random_string(rng)),
            1 => (rng.pick(&ordering), Literal::Int(rng.pick(&[0, -1, 500, i64::MAX, i64::MIN]))),
            2 => (
                rng.pick(&ordering),
                Literal::Float(rng.pick(&[0.5, -0.25, 1e300, 1e-7, 3.0, -0.0])),
            ),
            3 => (rng.pick(&equality), Literal::Bool(rng.below(2) == 0)),
            _ => (rng.pick(&ordering), Literal::Duration(rng.pick(&durations))),
        },
    }
}

fn random_field_expr(rng: &mut Rng, depth: usize) -> FieldExpr {
    let choice = if depth == 0 { 3 } else { rng.below(6) };
    match choice {
        0 => and(random_field_expr(rng, depth - 1), random_field_expr(rng, depth - 1)),
        1 => or(random_field_expr(rng, depth - 1), random_field_expr(rng, depth - 1)),
        2 => not(random_field_expr(rng, depth - 1)),
        _ => {
            let names =
                ["a", "http.method", "x y", "q\"uote", "日本", "a:b/c-d_e", "1", "back\\slash"];
            let attr = match rng.below(4) {
                0 => Attribute::Intrinsic(rng.pick(&Intrinsic::ALL)),
                1 => span(rng.pick(&names)),
                2 => res(rng.pick(&names)),
                _ => any(rng.pick(&names)),
            };
            let (op, value) = random_literal_for(rng, &attr);
            c(attr, op, value)
        }
    }
}

fn random_query(rng: &mut Rng, depth: usize) -> Query {
    let choice = if depth == 0 { 2 } else { rng.below(4) };
    match choice {
        0 => qand(random_query(rng, depth - 1), random_query(rng, depth - 1)),
        1 => qor(random_query(rng, depth - 1), random_query(rng, depth - 1)),
        _ if rng.below(5) == 0 => Query::Filter(Filter { expr: None }),
        _ => f(random_field_expr(rng, 3)),
    }
}

#[test]
fn random_syntax_trees_print_and_parse_back_unchanged() {
    let mut rng = Rng(7);
    for _ in 0..3_000 {
        let query = random_query(&mut rng, 3);
        let printed = query.to_string();
        assert_eq!(parse(&printed), Ok(query), "{printed}");
    }
}

// ------------------------------------------------------------------
// metrics pipelines
// ------------------------------------------------------------------

fn m(s: &str) -> MetricsQuery {
    parse_metrics(s).unwrap_or_else(|e| panic!("{s:?} should parse, got: {e}"))
}

#[track_caller]
fn assert_metrics_err(s: &str, needle: &str) {
    match parse_metrics(s) {
        Ok(q) => panic!("{s:?} should fail, parsed as {q:?}"),
        Err(e) => assert!(e.message.contains(needle), "{s:?}: {e}"),
    }
}

#[test]
fn metrics_functions_parse_with_their_arguments() {
    assert_eq!(m("{ } | rate()").function, MetricsFunction::Rate);
    assert_eq!(m("{} | count_over_time()").function, MetricsFunction::CountOverTime);
    assert_eq!(
        m("{ } | quantile_over_time(duration, 0.5, 0.9, 0.99)").function,
        MetricsFunction::QuantileOverTime(vec![0.5, 0.9, 0.99])
    );
    assert_eq!(
        m("{ } | quantile_over_time(span:duration, 1)").function,
        MetricsFunction::QuantileOverTime(vec![1.0])
    );
    assert_eq!(
        m("{ } | histogram_over_time(duration)").function,
        MetricsFunction::HistogramOverTime
    );
}

#[test]
fn metrics_by_keeps_attribute_order_and_drops_duplicates() {
    let q = m(
        r#"{ status = error } | rate() by (resource.service.name, span.http.route, name, status, name)"#,
    );
    assert_eq!(
        q.by,
        vec![
            res("service.name"),
            span("http.route"),
            Attribute::Intrinsic(Intrinsic::Name),
            Attribute::Intrinsic(Intrinsic::Status),
        ]
    );
    assert_eq!(q.spans, parse("{ status = error }").unwrap());
}

#[test]
fn metrics_hints_are_accepted_and_ignored() {
    // Traces Drilldown appends `with(sample=true)`.
    let q = m("{ } | rate()  with(sample=true)");
    assert_eq!(q.function, MetricsFunction::Rate);
    let q = m("{ } | histogram_over_time(duration) by(name) with(sample=true, exemplars=5)");
    assert_eq!(q.by.len(), 1);
}

#[test]
fn unsupported_metrics_pipelines_say_what_is_supported() {
    assert_metrics_err("{ }", "needs a pipeline");
    assert_metrics_err("{ } | avg_over_time(duration)", "unsupported: 'avg_over_time'");
    assert_metrics_err("{ } | compare({status=error})", "unsupported: 'compare'");
    assert_metrics_err("{ } | frobnicate()", "unknown metrics function");
    assert_metrics_err("{ } | rate() | topk(5)", "second-stage");
    assert_metrics_err("{ } | quantile_over_time(duration)", "at least one quantile");
    assert_metrics_err("{ } | quantile_over_time(duration, 1.5)", "not between 0 and 1");
    assert_metrics_err("{ } | quantile_over_time(span.size, 0.5)", "only span duration");
    assert_metrics_err("{ } | rate() by()", "an attribute in by()");
    assert_metrics_err("{ } | rate(duration)", "')' to close 'rate('");
}

#[test]
fn a_long_chain_of_one_operator_prints_flat_and_parses_back() {
    for op in ["||", "&&"] {
        let q = format!("{{ {} }}", vec![".a = 1"; 200].join(&format!(" {op} ")));
        let parsed = parse(&q).unwrap();
        let printed = parsed.to_string();
        assert!(printed.matches('(').count() <= 1, "{printed}");
        assert_eq!(parse(&printed), Ok(parsed));
    }
}

#[test]
fn metrics_queries_print_as_text_that_parses_back_to_the_same_query() {
    for q in [
        "{} | rate()",
        "{ resource.service.name = \"a\" && duration > 5ms } | count_over_time() by(span.http.route, name)",
        "{ status = error } | quantile_over_time(duration, 0.5, 0.99, 1) by(resource.service.name)",
        "{ } | histogram_over_time(duration)",
    ] {
        let parsed = parse_metrics(q).unwrap();
        let printed = parsed.to_string();
        assert_eq!(parse_metrics(&printed).unwrap(), parsed, "{q} printed as {printed}");
    }
}
