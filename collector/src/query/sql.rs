//! Guards for ad-hoc SQL (`POST /skein/api/sql`) against what DataFusion's own limits miss.
//!
//! - [`check`] looks at the raw tokens before anything parses them: a parser, planner,
//!   optimizer and even the drop of an expression tree recurse once per nesting level, so
//!   `SELECT 1+1+…` with 30k terms overflows the stack long before any memory limit applies.
//!   Counting operators and bracket depth on the flat token list bounds that depth.
//! - [`restrict`] removes from a session the functions that allocate outside the memory pool
//!   (their output size is an argument or grows with products of their inputs) and turns
//!   recursive CTEs off (an unbounded loop).
//! - [`check_plan`] refuses joins without an equality key (`CROSS JOIN`, `FROM a, b`, joins on
//!   `<` alone): their output is the product of their inputs, produced without ever waiting on
//!   I/O, so such a query never yields to the scheduler — it can be neither stopped by
//!   `--query-timeout` nor bounded by the memory pool (a `count(*)` holds no rows).
#![deny(clippy::arithmetic_side_effects)]

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use super::QueryError;

/// Tokens (without whitespace) a query may have.
pub const MAX_TOKENS: usize = 10_000;
/// Operators (arithmetic, comparison, `AND`/`OR`/`NOT`, …) a query may have: each can add a
/// level to an expression tree.
pub const MAX_OPERATORS: usize = 1_000;
/// Nesting of parentheses and brackets.
pub const MAX_DEPTH: usize = 32;

/// Functions refused in ad-hoc SQL: they build values or rows whose size is an argument
/// (`repeat('x', 1e12)`, `generate_series(1, 1e12)`) or a product of their inputs
/// (`replace(s, '', s)`), allocating outside DataFusion's memory pool.
pub const DENIED_FUNCTIONS: &[&str] = &[
    "generate_series",
    "range",
    "array_repeat",
    "list_repeat",
    "array_resize",
    "list_resize",
    "repeat",
    "lpad",
    "rpad",
    "replace",
    "regexp_replace",
];

fn is_operator(t: &Token) -> bool {
    match t {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::XOR
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::CASE
                | Keyword::WHEN
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::JOIN
        ),
        Token::DoubleEq
        | Token::Eq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::DuckIntDiv
        | Token::Mod
        | Token::StringConcat
        | Token::DoubleColon
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::Arrow
        | Token::LongArrow
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::Tilde
        | Token::ExclamationMark => true,
        _ => false,
    }
}

/// Why [`check`] refused a query: the refusal counter's reason and the error answered.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub error: QueryError,
}

/// Refuses queries whose tokens could nest deeper than the query threads' stacks allow, and
/// calls of [`DENIED_FUNCTIONS`] (with a clearer message than "invalid function").
pub fn check(sql: &str) -> Result<(), Refused> {
    let refuse = |reason, msg: String| Err(Refused { reason, error: QueryError::BadRequest(msg) });
    let tokens = match Tokenizer::new(&GenericDialect {}, sql).tokenize() {
        Ok(t) => t,
        Err(e) => return refuse("invalid", format!("invalid SQL: {e}")),
    };
    let mut count = 0usize;
    let mut operators = 0usize;
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut previous: Option<&Token> = None;
    for t in &tokens {
        match t {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::LParen | Token::LBracket | Token::LBrace => {
                if let (Token::LParen, Some(Token::Word(w))) = (t, previous) {
                    let name = w.value.to_ascii_lowercase();
                    if DENIED_FUNCTIONS.contains(&name.as_str()) {
                        return refuse(
                            "function",
                            format!(
                                "function {name} is not allowed in ad-hoc SQL: its result \
                                 can outgrow the query memory limit"
                            ),
                        );
                    }
                }
                depth = depth.saturating_add(1);
                deepest = deepest.max(depth);
            }
            Token::RParen | Token::RBracket | Token::RBrace => depth = depth.saturating_sub(1),
            t if is_operator(t) => operators = operators.saturating_add(1),
            _ => {}
        }
        count = count.saturating_add(1);
        previous = Some(t);
    }
    let too = |what: String| refuse("too_complex", format!("query too complex: {what}"));
    if operators > MAX_OPERATORS {
        return too(format!("{operators} operators, at most {MAX_OPERATORS} allowed"));
    }
    if count > MAX_TOKENS {
        return too(format!("{count} tokens, at most {MAX_TOKENS} allowed"));
    }
    if deepest > MAX_DEPTH {
        return too(format!("brackets nested {deepest} deep, at most {MAX_DEPTH} allowed"));
    }
    Ok(())
}

/// An input of at most one row (an aggregate without `GROUP BY`, as a decorrelated scalar
/// subquery is): joining it without a key multiplies nothing.
fn single_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(a) => a.group_expr.is_empty(),
        LogicalPlan::Projection(p) => single_row(&p.input),
        LogicalPlan::SubqueryAlias(a) => single_row(&a.input),
        LogicalPlan::Filter(f) => single_row(&f.input),
        _ => false,
    }
}

/// Refuses an optimised plan (equality filters have become join keys by then) holding a join
/// without an equality key (see the module documentation).
pub fn check_plan(plan: &LogicalPlan) -> Result<(), Refused> {
    let mut cartesian = false;
    let walked = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::Join(j) = p
            && j.on.is_empty()
            && !single_row(&j.left)
            && !single_row(&j.right)
        {
            cartesian = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if walked.is_err() || cartesian {
        return Err(Refused {
            reason: "too_complex",
            error: QueryError::BadRequest(
                "query too complex: a join needs an equality condition (`ON a.x = b.x`); \
                 cartesian products and joins on inequalities alone are not allowed in ad-hoc SQL"
                    .into(),
            ),
        });
    }
    Ok(())
}

/// Takes the [`DENIED_FUNCTIONS`] out of `ctx` and turns recursive CTEs off.
pub fn restrict(ctx: &SessionContext) {
    for name in DENIED_FUNCTIONS {
        ctx.deregister_udf(name);
        ctx.deregister_udtf(name);
    }
    ctx.state_ref().write().config_mut().options_mut().execution.enable_recursive_ctes = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> String {
        format!("SELECT 1{}", "+1".repeat(n))
    }

    #[test]
    fn long_operator_chains_are_refused_before_parsing() {
        assert!(check(&chain(100)).is_ok());
        let e = check(&chain(30_000)).unwrap_err();
        assert_eq!(e.reason, "too_complex");
        assert!(e.error.to_string().contains("30000 operators"), "{}", e.error);
        let ands = format!("SELECT 1 WHERE true{}", " AND true".repeat(2_000));
        assert!(check(&ands).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let nested = format!("SELECT {}1{}", "abs(".repeat(40), ")".repeat(40));
        assert!(check(&nested).is_err());
        let ok = format!("SELECT {}1{}", "abs(".repeat(5), ")".repeat(5));
        assert!(check(&ok).is_ok());
        let arrays = format!("SELECT {}1{}", "[".repeat(40), "]".repeat(40));
        assert!(check(&arrays).is_err());
    }

    #[tokio::test]
    async fn joins_without_an_equality_key_are_refused_and_equi_joins_pass() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a INT, b INT) AS VALUES (1, 2)").await.unwrap();
        for q in [
            "SELECT count(*) FROM t x CROSS JOIN t y",
            "SELECT count(*) FROM t x, t y",
            "SELECT count(*) FROM t x JOIN t y ON x.a < y.a",
            "SELECT (SELECT count(*) FROM t x, t y) FROM t",
        ] {
            let plan = ctx.sql(q).await.unwrap().into_optimized_plan().unwrap();
            assert!(check_plan(&plan).is_err(), "{q}");
        }
        for q in [
            "SELECT count(*) FROM t x JOIN t y ON x.a = y.a",
            "SELECT count(*) FROM t x, t y WHERE x.a = y.a",
            "SELECT a FROM t WHERE b > 1",
            "SELECT a, (SELECT max(b) FROM t) FROM t",
        ] {
            let plan = ctx.sql(q).await.unwrap().into_optimized_plan().unwrap();
            assert!(check_plan(&plan).is_ok(), "{q}");
        }
    }

    #[test]
    fn ordinary_queries_pass() {
        for q in [
            "SELECT service_name, count(*) FROM spans WHERE duration > 1000000 GROUP BY 1",
            "WITH x AS (SELECT name, duration FROM spans) SELECT name, max(duration) FROM x GROUP BY name",
            "SELECT attr_str(span_attrs, 'db.system') AS db FROM spans WHERE kind = 2 AND status_code <> 2",
        ] {
            check(q).unwrap();
        }
    }

    #[test]
    fn denied_functions_are_refused_by_name() {
        for q in [
            "SELECT REPEAT('x', 1000000000)",
            "SELECT * FROM generate_series (1, 10)",
            "SELECT lpad(name, 100000000) FROM spans",
        ] {
            assert_eq!(check(q).unwrap_err().reason, "function", "{q}");
        }
        // A column or alias of that name is not a call.
        check("SELECT duration AS range FROM spans ORDER BY range").unwrap();
    }

    #[tokio::test]
    async fn denied_functions_are_unknown_in_a_restricted_session() {
        let ctx = SessionContext::new();
        restrict(&ctx);
        for q in [
            "SELECT repeat('x', 1000000000)",
            "SELECT lpad('x', 1000000000)",
            "SELECT rpad('x', 1000000000, 'y')",
            "SELECT array_repeat(1, 1000000000)",
            "SELECT list_resize([1], 1000000000)",
            "SELECT replace('ab', '', 'cd')",
            "SELECT * FROM generate_series(1, 1000000000000)",
            "SELECT * FROM range(1000000000000)",
            "SELECT generate_series(1, 1000000000)",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
        ] {
            assert!(ctx.sql(q).await.is_err(), "{q} was planned");
        }
        let df = ctx.sql("SELECT upper('x') AS u, abs(-1) AS a").await.unwrap();
        assert_eq!(df.collect().await.unwrap()[0].num_rows(), 1);
    }
}
