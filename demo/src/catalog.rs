//! What the shop sells: a small, fixed catalogue shared by the gateway (validation), orders
//! (prices) and inventory (initial stock).

use serde::Serialize;

use crate::proto::Item;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Product {
    pub sku: &'static str,
    pub name: &'static str,
    pub price_cents: u64,
    /// Units in stock when inventory starts (inventory restocks the others as they sell).
    #[serde(skip)]
    pub initial_stock: u32,
}

/// The product that is always out of stock: ordering it fails with `FAILED_PRECONDITION` (409).
pub const OUT_OF_STOCK_SKU: &str = "vintage-roaster";

pub const PRODUCTS: &[Product] = &[
    product("espresso-beans", "Espresso beans, 1 kg", 1_490, 500),
    product("moka-pot", "Moka pot, 6 cups", 3_450, 200),
    product("milk-frother", "Milk frother", 2_990, 150),
    product("paper-filters", "Paper filters, 100 pcs", 590, 1_000),
    product("gooseneck-kettle", "Gooseneck kettle", 6_900, 80),
    product("burr-grinder", "Burr grinder", 12_900, 40),
    product("espresso-machine", "Espresso machine", 64_900, 10),
    product(OUT_OF_STOCK_SKU, "Vintage drum roaster", 189_000, 0),
];

const fn product(sku: &'static str, name: &'static str, price_cents: u64, stock: u32) -> Product {
    Product { sku, name, price_cents, initial_stock: stock }
}

pub fn find(sku: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.sku == sku)
}

/// The price of an order in cents; `Err(sku)` names the first unknown product.
pub fn order_total(items: &[Item]) -> Result<u64, String> {
    items.iter().try_fold(0u64, |total, item| {
        let p = find(&item.sku).ok_or_else(|| item.sku.clone())?;
        Ok(total.saturating_add(p.price_cents.saturating_mul(u64::from(item.quantity))))
    })
}

/// `1234` → `"12.34"`.
pub fn format_cents(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_unknown_skus() {
        let items = vec![
            Item { sku: "moka-pot".into(), quantity: 2 },
            Item { sku: "paper-filters".into(), quantity: 1 },
        ];
        assert_eq!(order_total(&items), Ok(2 * 3_450 + 590));
        let bad = vec![Item { sku: "nope".into(), quantity: 1 }];
        assert_eq!(order_total(&bad), Err("nope".to_string()));
        assert_eq!(format_cents(7_490), "74.90");
        assert_eq!(find(OUT_OF_STOCK_SKU).map(|p| p.initial_stock), Some(0));
    }
}
