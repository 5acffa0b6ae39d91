//! The four regions of the laboratory and the round-trip times between them.
//!
//! Each region stands for one cloud region, the one an operator in that part of the world would
//! most likely rent: Europe is Frankfurt (AWS eu-central-1), North America is N. Virginia
//! (us-east-1), South America is São Paulo (sa-east-1), Asia is Tokyo (ap-northeast-1). The npm
//! upstream is placed in North America ([`UPSTREAM_REGION`]).
//!
//! # Where the figures come from
//!
//! The inter-region round-trip times are the averages of the published table "Latency Between
//! AWS Global Regions" (EC2 to EC2, average RTT in milliseconds), as reproduced in "A Computer
//! Scientist Learns AWS — AWS Regions", April 2017
//! (<https://acomputerscientistlearnsaws.blogspot.com/2017/04/aws-regions.html>). The table is
//! not symmetric to the hundredth of a millisecond; where its two directions differ the
//! figure here is the one in the N. Virginia row, else the first row it appears in:
//!
//! | RTT (ms)      | Frankfurt | N. Virginia | São Paulo | Tokyo |
//! |---------------|----------:|------------:|----------:|------:|
//! | Frankfurt     |         1 |       88.66 |    194.90 | 236.5 |
//! | N. Virginia   |     88.66 |           1 |    119.50 | 145.3 |
//! | São Paulo     |    194.90 |      119.50 |         1 | 256.8 |
//! | Tokyo         |    236.50 |      145.30 |    256.80 |     1 |
//!
//! Within one region the table has no figure; [`INTRA_REGION_RTT`] is 1 ms, the order of the
//! inter-availability-zone round trips measured (best of 50 pings) in "Measuring AWS Region and
//! AZ Latency" (<https://www.xkyle.com/Measuring-AWS-Region-and-AZ-Latency/>, from 0.25 ms to
//! 3.4 ms depending on the region and zones).
//!
//! The one-way delay of a pair is half its round trip, the same in both directions.

use std::{fmt, net::Ipv4Addr, str::FromStr, time::Duration};

use anyhow::{Result, bail};

/// One of the four regions Open-Registry wants to be fast in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    /// Frankfurt (eu-central-1).
    Europe,
    /// N. Virginia (us-east-1), where the npm upstream is placed.
    NorthAmerica,
    /// São Paulo (sa-east-1).
    SouthAmerica,
    /// Tokyo (ap-northeast-1).
    Asia,
}

/// Where the npm upstream sits in the laboratory.
pub const UPSTREAM_REGION: Region = Region::NorthAmerica;

/// The round trip between two hosts of the same region (see the module docs).
pub const INTRA_REGION_RTT: Duration = Duration::from_millis(1);

/// The inter-region round trips in microseconds, indexed by [`Region::index`] − 1 (see the
/// module docs for the source).
const RTT_US: [[u64; 4]; 4] = [
    // Frankfurt, N. Virginia, São Paulo, Tokyo
    [1_000, 88_660, 194_900, 236_500],
    [88_660, 1_000, 119_500, 145_300],
    [194_900, 119_500, 1_000, 256_800],
    [236_500, 145_300, 256_800, 1_000],
];

impl Region {
    /// Every region, in index order.
    pub const ALL: [Region; 4] = [
        Region::Europe,
        Region::NorthAmerica,
        Region::SouthAmerica,
        Region::Asia,
    ];

    /// 1 to 4: the second octet of the region's addresses (`10.<index>.0.0/16`).
    pub fn index(self) -> u8 {
        match self {
            Region::Europe => 1,
            Region::NorthAmerica => 2,
            Region::SouthAmerica => 3,
            Region::Asia => 4,
        }
    }

    /// The short name used in host names and reports: `eu`, `na`, `sa`, `asia`.
    pub fn short(self) -> &'static str {
        match self {
            Region::Europe => "eu",
            Region::NorthAmerica => "na",
            Region::SouthAmerica => "sa",
            Region::Asia => "asia",
        }
    }

    /// The cloud region it stands for.
    pub fn site(self) -> &'static str {
        match self {
            Region::Europe => "Frankfurt (eu-central-1)",
            Region::NorthAmerica => "N. Virginia (us-east-1)",
            Region::SouthAmerica => "São Paulo (sa-east-1)",
            Region::Asia => "Tokyo (ap-northeast-1)",
        }
    }

    /// The region a public laboratory address (`10.<index>.x.y`) belongs to; `None` for any
    /// other address (a laptop's private address, loopback, …).
    pub fn of_addr(addr: Ipv4Addr) -> Option<Region> {
        let [a, b, _, _] = addr.octets();
        if a != 10 {
            return None;
        }
        Region::ALL.into_iter().find(|r| r.index() == b)
    }

    /// The published round trip between `self` and `other` at full scale.
    pub fn rtt(self, other: Region) -> Duration {
        Duration::from_micros(RTT_US[usize::from(self.index() - 1)][usize::from(other.index() - 1)])
    }

    /// The one-way delay between `self` and `other` at full scale: half the round trip.
    pub fn one_way(self, other: Region) -> Duration {
        self.rtt(other) / 2
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

impl FromStr for Region {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Region> {
        match s.to_ascii_lowercase().as_str() {
            "eu" | "europe" => Ok(Region::Europe),
            "na" | "north-america" | "northamerica" => Ok(Region::NorthAmerica),
            "sa" | "south-america" | "southamerica" => Ok(Region::SouthAmerica),
            "asia" => Ok(Region::Asia),
            _ => bail!("unknown region {s:?} (eu, na, sa or asia)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_symmetric_and_local_is_fastest() {
        for a in Region::ALL {
            for b in Region::ALL {
                assert_eq!(a.rtt(b), b.rtt(a), "{a} ↔ {b}");
                assert!(a.rtt(a) <= a.rtt(b), "{a} ↔ {b}");
            }
            assert_eq!(a.rtt(a), INTRA_REGION_RTT);
            assert_eq!(Region::of_addr(Ipv4Addr::new(10, a.index(), 7, 2)), Some(a));
            assert_eq!(a.short().parse::<Region>().unwrap(), a);
        }
        assert_eq!(Region::of_addr(Ipv4Addr::new(192, 168, 1, 10)), None);
        assert_eq!(Region::of_addr(Ipv4Addr::new(10, 9, 0, 2)), None);
        assert_eq!(
            Region::Europe.rtt(UPSTREAM_REGION),
            Duration::from_micros(88_660)
        );
    }
}
