//! Bounds on how deep and how large a PromQL expression may be. promql-parser and everything
//! that walks its tree (type checks, our evaluator, drop) recurse once per level, so a query of
//! 50,000 nested parentheses would overflow the stack. The raw text is checked before it
//! reaches the parser (bracket depth, operator count), and the parsed tree again (depth, node
//! count) before anything of ours walks it.
#![deny(clippy::arithmetic_side_effects)]

use promql_parser::parser::Expr;

/// Nesting levels at most: brackets in the text, levels in the tree.
pub const MAX_DEPTH: usize = 128;
/// Operators in the text, and nodes in the tree, at most.
pub const MAX_NODES: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("query too complex: {0}")]
pub struct DepthError(String);

impl crate::error::Coded for DepthError {
    fn code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::InvalidArgument
    }
}

fn too_deep() -> DepthError {
    DepthError(format!("more than {MAX_DEPTH} levels of nesting"))
}

fn too_many() -> DepthError {
    DepthError(format!("more than {MAX_NODES} operators or expressions"))
}

/// Operator words of PromQL (binary set operators and `atan2`).
const WORD_OPERATORS: [&str; 4] = ["and", "or", "unless", "atan2"];

/// Checks the query text: bracket depth outside string literals and comments, and the number
/// of operators outside label matchers. Each operator (unary ones included) can add a tree
/// level without a bracket, so both bound the parser's recursion.
pub fn check_text(q: &str) -> Result<(), DepthError> {
    let mut depth: usize = 0;
    // Depth of `{` at which matchers are read; operators inside braces are matchers.
    let mut braces: usize = 0;
    let mut ops: usize = 0;
    let mut chars = q.chars().peekable();
    let count_op = |ops: &mut usize| -> Result<(), DepthError> {
        *ops = ops.checked_add(1).filter(|n| *n <= MAX_NODES).ok_or_else(too_many)?;
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // Go-style literals: backslash escapes except in raw (backquoted) strings.
                while let Some(s) = chars.next() {
                    if s == c {
                        break;
                    }
                    if s == '\\' && c != '`' {
                        chars.next();
                    }
                }
            }
            '#' => {
                for s in chars.by_ref() {
                    if s == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth = depth.checked_add(1).filter(|d| *d <= MAX_DEPTH).ok_or_else(too_deep)?;
                if c == '{' {
                    braces = braces.saturating_add(1);
                }
            }
            ')' | ']' | '}' => {
                depth = depth.saturating_sub(1);
                if c == '}' {
                    braces = braces.saturating_sub(1);
                }
            }
            // `==`, `!=`, `<=`, `>=` are one operator; a lone `=` is none.
            '+' | '-' | '*' | '/' | '%' | '^' | '<' | '>' | '=' | '!'
                if braces == 0 && (chars.next_if_eq(&'=').is_some() || c != '=') =>
            {
                count_op(&mut ops)?;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut word = String::from(c);
                while let Some(n) =
                    chars.next_if(|n| n.is_ascii_alphanumeric() || *n == '_' || *n == ':')
                {
                    word.push(n);
                }
                if braces == 0 && WORD_OPERATORS.iter().any(|w| word.eq_ignore_ascii_case(w)) {
                    count_op(&mut ops)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks the parsed tree: depth and node count. Recurses, but never past [`MAX_DEPTH`].
pub fn check_expr(e: &Expr) -> Result<(), DepthError> {
    let mut nodes: usize = 0;
    walk(e, 0, &mut nodes)
}

fn walk(e: &Expr, depth: usize, nodes: &mut usize) -> Result<(), DepthError> {
    let depth = depth.checked_add(1).filter(|d| *d <= MAX_DEPTH).ok_or_else(too_deep)?;
    *nodes = nodes.checked_add(1).filter(|n| *n <= MAX_NODES).ok_or_else(too_many)?;
    match e {
        Expr::Paren(p) => walk(&p.expr, depth, nodes),
        Expr::Unary(u) => walk(&u.expr, depth, nodes),
        Expr::Subquery(s) => walk(&s.expr, depth, nodes),
        Expr::Binary(b) => {
            walk(&b.lhs, depth, nodes)?;
            walk(&b.rhs, depth, nodes)
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                walk(p, depth, nodes)?;
            }
            walk(&a.expr, depth, nodes)
        }
        Expr::Call(c) => c.args.args.iter().try_for_each(|a| walk(a, depth, nodes)),
        Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}1{}", "(".repeat(n), ")".repeat(n))
    }

    #[test]
    fn deep_brackets_are_refused_before_parsing() {
        assert!(check_text(&nested(MAX_DEPTH)).is_ok());
        assert!(check_text(&nested(MAX_DEPTH + 1)).is_err());
        assert!(check_text(&nested(50_000)).is_err());
        assert!(check_text(&format!("sum({})", "[".repeat(50_000))).is_err());
    }

    #[test]
    fn brackets_inside_strings_and_comments_do_not_count() {
        let q = format!("label_replace(up, \"a\", \"{}\", \"b\", \"(.*)\")", "(".repeat(500));
        assert!(check_text(&q).is_ok());
        assert!(check_text(&format!("up{{a=`{}`}}", "(".repeat(500))).is_ok());
        assert!(check_text(&format!("up{{a='\\'{}'}}", "[".repeat(500))).is_ok());
        assert!(check_text(&format!("up # {}\n", "(".repeat(500))).is_ok());
    }

    #[test]
    fn long_operator_chains_are_refused_but_matchers_are_not_operators() {
        assert!(check_text(&vec!["1"; MAX_NODES].join("+")).is_ok());
        assert!(check_text(&vec!["1"; MAX_NODES + 2].join("+")).is_err());
        assert!(check_text(&format!("{}1", "-".repeat(50_000))).is_err());
        assert!(check_text(&vec!["up"; MAX_NODES + 2].join(" or ")).is_err());
        let matchers: Vec<String> = (0..2000).map(|i| format!("l{i}!=\"x\"")).collect();
        assert!(check_text(&format!("up{{{}}}", matchers.join(","))).is_ok());
        assert!(check_text("up{a=\"b\"} == 1 and orders_total >= 2").is_ok());
    }

    #[test]
    fn parsed_trees_are_bounded_in_depth_and_size() {
        let deep = format!("{}up", "-".repeat(MAX_DEPTH));
        let e = promql_parser::parser::parse(&deep).unwrap();
        assert!(check_expr(&e).is_err());
        let e = promql_parser::parser::parse(&vec!["up"; 600].join(" + ")).unwrap();
        assert!(check_expr(&e).is_err(), "600 levels deep and 1199 nodes");
        let e = promql_parser::parser::parse("sum by (a) (rate(x[5m])) / 2").unwrap();
        assert!(check_expr(&e).is_ok());
    }
}
