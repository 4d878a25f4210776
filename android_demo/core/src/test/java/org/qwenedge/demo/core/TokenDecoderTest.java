package org.qwenedge.demo.core;

import java.io.StringReader;
import java.util.Arrays;

final class TokenDecoderTest {
  private TokenDecoderTest() {}

  private static TokenDecoder decoder(Integer... ids) {
    return TokenDecoder.read(new StringReader(Fixtures.TOKENIZER), Arrays.asList(ids), "tokenizer.json");
  }

  static void testByteLevelTokensDecodeToTheirBytes() {
    TokenDecoder d = decoder(10, 11, 12, 13, 16);
    Check.equal("Hello world\n\u00e9\u4e2d", d.decode(new int[] {10, 11, 12, 13, 16}), "text");
    Check.equal(new byte[] {' ', 'w', 'o', 'r', 'l', 'd'}, d.pieces(new int[] {11}).get(0), "Ġ is the space byte");
    Check.equal(new byte[] {(byte) 0xE4, (byte) 0xB8, (byte) 0xAD}, d.pieces(new int[] {16}).get(0),
        "Ń stands for byte 0xAD (not printable, so remapped)");
  }

  static void testACharacterSplitAcrossTokensIsJoinedAsBytes() {
    TokenDecoder d = decoder(14, 15);
    Check.equal(new byte[] {(byte) 0xC3}, d.pieces(new int[] {14}).get(0), "first byte of é");
    Check.equal("\u00e9", d.decode(new int[] {14, 15}), "é from two tokens");
  }

  static void testSpecialTokensAreTheirText() {
    Check.equal("<|im_start|>Hello<|im_end|>", decoder(10, 20, 21).decode(new int[] {21, 10, 20}), "special tokens");
  }

  static void testATokenOutsideTheByteTableIsItsUtf8Text() {
    Check.equal(new byte[] {(byte) 0xE2, (byte) 0x82, (byte) 0xAC}, TokenDecoder.tokenBytes("\u20ac"), "euro sign");
  }

  static void testAnUnknownIdIsNamed() {
    Check.raises(BundleException.class, () -> decoder(10, 99), "no token with id 99");
    Check.raises(IllegalArgumentException.class, () -> decoder(10).pieces(new int[] {11}), "token id 11 was not loaded");
  }

  static void testOnlyByteLevelBpeIsDecoded() {
    String metaspace = Fixtures.TOKENIZER.replace("\"decoder\": {\"type\": \"ByteLevel\"", "\"decoder\": {\"type\": \"Metaspace\"");
    Check.raises(BundleException.class,
        () -> TokenDecoder.read(new StringReader(metaspace), Arrays.asList(10), "tokenizer.json"),
        "a BPE model with a Metaspace decoder", "byte-level BPE tokenizers (Qwen's) only");
  }

  static void testMalformedTokenizerIsABundleError() {
    Check.raises(BundleException.class,
        () -> TokenDecoder.read(new StringReader("{\"model\": {\"vocab\": {\"a\": }}}"), Arrays.asList(1), "tokenizer.json"),
        "tokenizer.json: not valid JSON");
  }
}
