package org.qwenedge.demo.core;

import java.io.StringReader;
import java.util.Map;

final class SelfCheckTest {
  private SelfCheckTest() {}

  private static SelfCheck check() {
    return SelfCheck.parse(Fixtures.selfcheck());
  }

  private static TokenDecoder decoder(SelfCheck check) {
    return TokenDecoder.read(new StringReader(Fixtures.TOKENIZER), check.idsToDecode(), "tokenizer.json");
  }

  private static SelfCheck.Result run(String generated, GenerationStats stats) {
    SelfCheck check = check();
    return check.evaluate(decoder(check), generated, stats);
  }

  static void testReadsTheFile() {
    SelfCheck c = check();
    Check.equal("Say hello", c.prompt(), "prompt text");
    Check.equal(new int[] {1, 2, 3}, c.promptIds, "prompt ids");
    Check.equal(new int[] {10, 11, 12, 16, 20}, c.expectedIds, "expected ids");
    Check.equal(11, c.seqLen(), "prompt and every reference token");
    Check.equal(4, c.minMatchingPrefix, "tolerance");
  }

  static void testEveryTokenMatchingPasses() {
    SelfCheck.Result r = run("Hello world\n\u4e2d<|im_end|>", null);
    Check.isTrue(r.passed, r.summary());
    Check.equal(5, r.matching, "matching tokens");
    Check.equal(null, r.detail, "no detail when all match");
    Check.equal("Self-check passed: 5 of 5 reference tokens match (4 required)", r.summary(), "summary");
  }

  static void testAnEosTheRunnerDidNotPrintStillMatches() {
    SelfCheck.Result r = run("Hello world\n\u4e2d", null);
    Check.equal(5, r.matching, "the EOS matches at the end of the text");
  }

  static void testTheToleranceAllowsALateDifference() {
    SelfCheck.Result r = run("Hello world\n\u4e2d and more", null);
    Check.equal(4, r.matching, "four tokens, then text where the EOS was expected");
    Check.isTrue(r.passed, "4 of 5 is enough for this tolerance");
    Check.isTrue(r.detail.contains("first difference at token 4"), r.detail);
  }

  static void testAnEarlyDifferenceFailsAndSaysWhere() {
    SelfCheck.Result r = run("Hello world\nX", null);
    Check.isTrue(!r.passed, "3 of 5 is below 4");
    Check.equal("Self-check FAILED: 3 of 5 reference tokens match (4 required); first difference at token 3:"
        + " expected \"\u4e2d<|im_end|>\", got \"X\"", r.summary(), "summary");
  }

  static void testAPartialCharacterDoesNotMatch() {
    SelfCheck.Result r = run("Hello world\n\u4e00", null);
    Check.equal(3, r.matching, "\u4e00 shares two of \u4e2d's three UTF-8 bytes: no match");
  }

  static void testADifferentPromptLengthBlamesTheTokenizer() {
    SelfCheck.Result r = run("Hello", new GenerationStats(5, 1, 0, 10, 20));
    Check.isTrue(r.detail.contains("the runner's tokenizer made 5 prompt tokens, the exporter's 3"), r.detail);
  }

  static void testABundleWithoutPromptTextCannotBeChecked() {
    Map<String, Object> json = Fixtures.selfcheck();
    json.put("prompt_text", null);
    SelfCheck c = SelfCheck.parse(json);
    Check.raises(BundleException.class, c::prompt, "prompt_text is null", "exported without a tokenizer");
  }

  @SuppressWarnings("unchecked")
  static void testMalformedFilesAreRefused() {
    Map<String, Object> json = Fixtures.selfcheck();
    json.put("sampling", "top_p");
    Check.raises(BundleException.class, () -> SelfCheck.parse(json), "selfcheck.json: sampling is \"top_p\"");
    Map<String, Object> newer = Fixtures.selfcheck();
    newer.put("schema_version", 2L);
    Check.raises(BundleException.class, () -> SelfCheck.parse(newer), "schema_version 2", "update the app");
    Map<String, Object> tooMany = Fixtures.selfcheck();
    tooMany.put("max_new_tokens", 2L);
    Check.raises(BundleException.class, () -> SelfCheck.parse(tooMany), "expected_ids holds 5 ids, expected 1 to max_new_tokens (2)");
    Map<String, Object> tolerance = Fixtures.selfcheck();
    ((Map<String, Object>) tolerance.get("tolerance")).put("min_matching_prefix", 6L);
    Check.raises(BundleException.class, () -> SelfCheck.parse(tolerance), "tolerance.min_matching_prefix is 6, outside 0..5");
    Map<String, Object> ids = Fixtures.selfcheck();
    ids.put("prompt_ids", Fixtures.longs(1, 1L << 40));
    Check.raises(BundleException.class, () -> SelfCheck.parse(ids), "prompt_ids[1] is out of range");
  }
}
