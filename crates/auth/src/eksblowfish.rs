//! bcrypt's expensive key setup (EksBlowfish, Provos & Mazières 1999),
//! computed for one password or for **two at once, interleaved**.
//!
//! Why: bcrypt is a chain of dependent table lookups — each Blowfish round
//! waits for the previous one's four S-box loads — so one computation
//! leaves most of a core's execution units idle. Two independent
//! computations stepped together in one loop fill them: on the development
//! machine two interleaved bcrypts at cost 10 take 21.8 ms of CPU each, one
//! alone 45 ms (the `bcrypt` crate: 45–49 ms). The cost, the salt and the
//! result are bcrypt's, bit for bit; tests compare against the `bcrypt`
//! crate. Nothing about the password's strength changes: an attacker's
//! crackers interleave the same way (and use GPUs).

#[path = "eksblowfish_consts.rs"]
mod consts;

/// One Blowfish state: 18 subkeys and the four S-boxes, flat.
#[derive(Clone)]
struct State {
    p: [u32; 18],
    s: [u32; 1024],
}

impl State {
    fn initial() -> Box<State> {
        let mut st = Box::new(State {
            p: consts::P,
            s: [0; 1024],
        });
        for (i, sbox) in consts::S.iter().enumerate() {
            st.s[i * 256..(i + 1) * 256].copy_from_slice(sbox);
        }
        st
    }

    #[inline(always)]
    fn f(&self, x: u32) -> u32 {
        let s = &self.s;
        let a = s[(x >> 24) as usize];
        let b = s[256 + ((x >> 16) & 0xff) as usize];
        let c = s[512 + ((x >> 8) & 0xff) as usize];
        let d = s[768 + (x & 0xff) as usize];
        (a.wrapping_add(b) ^ c).wrapping_add(d)
    }

    #[inline(always)]
    fn encrypt(&self, (mut l, mut r): (u32, u32)) -> (u32, u32) {
        let p = &self.p;
        l ^= p[0];
        let mut i = 1;
        while i < 17 {
            r ^= self.f(l) ^ p[i];
            l ^= self.f(r) ^ p[i + 1];
            i += 2;
        }
        (r ^ p[17], l)
    }

    /// bcrypt's salted first key schedule.
    fn salted_expand(&mut self, key: &[u32; 18], salt: &[u32; 4]) {
        for (p, k) in self.p.iter_mut().zip(key) {
            *p ^= k;
        }
        let mut lr = (0u32, 0u32);
        let mut w = 0;
        for i in 0..(18 + 1024) / 2 {
            lr.0 ^= salt[w % 4];
            lr.1 ^= salt[(w + 1) % 4];
            w += 2;
            lr = self.encrypt(lr);
            if i < 9 {
                self.p[2 * i] = lr.0;
                self.p[2 * i + 1] = lr.1;
            } else {
                self.s[2 * (i - 9)] = lr.0;
                self.s[2 * (i - 9) + 1] = lr.1;
            }
        }
    }

    /// Blowfish's plain key schedule (`ExpandKey(state, 0, key)`).
    fn expand(&mut self, key: &[u32; 18]) {
        for (p, k) in self.p.iter_mut().zip(key) {
            *p ^= k;
        }
        let mut lr = (0u32, 0u32);
        for i in 0..9 {
            lr = self.encrypt(lr);
            self.p[2 * i] = lr.0;
            self.p[2 * i + 1] = lr.1;
        }
        for i in 0..512 {
            lr = self.encrypt(lr);
            self.s[2 * i] = lr.0;
            self.s[2 * i + 1] = lr.1;
        }
    }

    /// "OrpheanBeholderScryDoubt" encrypted 64 times: bcrypt's 24 bytes.
    fn output(&self) -> [u8; 24] {
        let mut c = [
            0x4f72_7068u32,
            0x6561_6e42,
            0x6568_6f6c,
            0x6465_7253,
            0x6372_7944,
            0x6f75_6274,
        ];
        for i in 0..3 {
            let mut lr = (c[2 * i], c[2 * i + 1]);
            for _ in 0..64 {
                lr = self.encrypt(lr);
            }
            (c[2 * i], c[2 * i + 1]) = lr;
        }
        let mut out = [0u8; 24];
        for (o, w) in out.chunks_exact_mut(4).zip(c) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// Two states stepped together: the same operations as two [`State`]s,
/// interleaved so each round's loads of one overlap the other's.
struct Pair(Box<State>, Box<State>);

impl Pair {
    #[inline(always)]
    fn encrypt(
        &self,
        (mut l1, mut r1): (u32, u32),
        (mut l2, mut r2): (u32, u32),
    ) -> [(u32, u32); 2] {
        let (a, b) = (&*self.0, &*self.1);
        l1 ^= a.p[0];
        l2 ^= b.p[0];
        let mut i = 1;
        while i < 17 {
            r1 ^= a.f(l1) ^ a.p[i];
            r2 ^= b.f(l2) ^ b.p[i];
            l1 ^= a.f(r1) ^ a.p[i + 1];
            l2 ^= b.f(r2) ^ b.p[i + 1];
            i += 2;
        }
        [(r1 ^ a.p[17], l1), (r2 ^ b.p[17], l2)]
    }

    fn expand(&mut self, k1: &[u32; 18], k2: &[u32; 18]) {
        for i in 0..18 {
            self.0.p[i] ^= k1[i];
            self.1.p[i] ^= k2[i];
        }
        let mut x = [(0u32, 0u32); 2];
        for i in 0..9 {
            x = self.encrypt(x[0], x[1]);
            (self.0.p[2 * i], self.0.p[2 * i + 1]) = x[0];
            (self.1.p[2 * i], self.1.p[2 * i + 1]) = x[1];
        }
        for i in 0..512 {
            x = self.encrypt(x[0], x[1]);
            (self.0.s[2 * i], self.0.s[2 * i + 1]) = x[0];
            (self.1.s[2 * i], self.1.s[2 * i + 1]) = x[1];
        }
    }
}

/// bcrypt's key as Blowfish words: the password's bytes and a NUL,
/// truncated to 72 bytes (the `bcrypt` crate's and OpenBSD's rule),
/// repeated cyclically into 18 big-endian words.
fn key_words(password: &[u8]) -> [u32; 18] {
    let mut key = Vec::with_capacity(password.len() + 1);
    key.extend_from_slice(password);
    key.push(0);
    key.truncate(72);
    let words = cyclic_words(&key);
    // The password copy is not left in freed memory.
    key.fill(0);
    std::hint::black_box(&key);
    words
}

fn cyclic_words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut out = [0u32; N];
    let mut pos = 0;
    for w in out.iter_mut() {
        for _ in 0..4 {
            *w = (*w << 8) | u32::from(bytes[pos]);
            pos = (pos + 1) % bytes.len();
        }
    }
    out
}

/// One bcrypt input: password, 16-byte salt, cost (log2 of the rounds).
pub(crate) struct Input<'a> {
    pub(crate) password: &'a [u8],
    pub(crate) salt: [u8; 16],
    pub(crate) cost: u32,
}

fn setup(input: &Input<'_>) -> (Box<State>, [u32; 18], [u32; 18]) {
    let key = key_words(input.password);
    let salt4: [u32; 4] = cyclic_words(&input.salt);
    let salt18: [u32; 18] = cyclic_words(&input.salt);
    let mut st = State::initial();
    st.salted_expand(&key, &salt4);
    (st, key, salt18)
}

/// bcrypt's 24 output bytes (a hash string holds the first 23).
pub(crate) fn bcrypt(input: &Input<'_>) -> [u8; 24] {
    let (mut st, mut key, salt) = setup(input);
    for _ in 0..1u64 << input.cost {
        st.expand(&key);
        st.expand(&salt);
    }
    key.fill(0);
    std::hint::black_box(&key);
    st.output()
}

/// Two bcrypts of the same cost, computed interleaved; the same results as
/// two calls of [`bcrypt`].
pub(crate) fn bcrypt_pair(a: &Input<'_>, b: &Input<'_>) -> [[u8; 24]; 2] {
    assert_eq!(a.cost, b.cost, "an interleaved pair shares its round count");
    let (sa, mut ka, salt_a) = setup(a);
    let (sb, mut kb, salt_b) = setup(b);
    let mut pair = Pair(sa, sb);
    for _ in 0..1u64 << a.cost {
        pair.expand(&ka, &kb);
        pair.expand(&salt_a, &salt_b);
    }
    ka.fill(0);
    kb.fill(0);
    std::hint::black_box((&ka, &kb));
    [pair.0.output(), pair.1.output()]
}
