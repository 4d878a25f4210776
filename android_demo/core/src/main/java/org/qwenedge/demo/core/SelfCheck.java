package org.qwenedge.demo.core;

import static org.qwenedge.demo.core.Contract.EOS_TOKEN_IDS;
import static org.qwenedge.demo.core.Contract.EXPECTED_IDS;
import static org.qwenedge.demo.core.Contract.GREEDY;
import static org.qwenedge.demo.core.Contract.MAX_NEW_TOKENS;
import static org.qwenedge.demo.core.Contract.MIN_MATCHING_PREFIX;
import static org.qwenedge.demo.core.Contract.PROMPT_IDS;
import static org.qwenedge.demo.core.Contract.PROMPT_TEXT;
import static org.qwenedge.demo.core.Contract.SAMPLING;
import static org.qwenedge.demo.core.Contract.SCHEMA_VERSION;
import static org.qwenedge.demo.core.Contract.SELFCHECK_SCHEMA;
import static org.qwenedge.demo.core.Contract.TOLERANCE;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The bundle's first-launch check ({@code selfcheck.json}): greedy-decode the reference prompt on
 * the device and compare with the fp32 reference's tokens.
 *
 * <p>The app drives ExecuTorch's stock runner, which takes text and returns text, so the prompt goes
 * in as {@code prompt_text} and the comparison is on bytes: token k matches when the bytes of the
 * expected tokens 0..k are a prefix of the generated text. An expected EOS token also matches when
 * the text ends right there (the runner stopped at it without printing it). The check passes when at
 * least {@code tolerance.min_matching_prefix} leading tokens match (the exporter sets it from the
 * artifact's quantization).
 */
public final class SelfCheck {
  public static final String FILE = "selfcheck.json";

  public final String promptText;
  public final int[] promptIds;
  public final int[] expectedIds;
  public final int[] eosTokenIds;
  public final int maxNewTokens;
  public final int minMatchingPrefix;

  private SelfCheck(Node root) {
    long version = root.get(SCHEMA_VERSION).longValue();
    if (version != SELFCHECK_SCHEMA) {
      throw new BundleException(FILE + ": schema_version " + version + ", this app reads " + SELFCHECK_SCHEMA
          + "; " + (version > SELFCHECK_SCHEMA ? "update the app" : "re-export the bundle"));
    }
    String sampling = root.get(SAMPLING).string();
    if (!sampling.equals(GREEDY)) throw root.get(SAMPLING).problem("is \"" + sampling + "\", the app checks \"greedy\" only");
    promptText = root.get(PROMPT_TEXT).stringOrNull();
    promptIds = root.get(PROMPT_IDS).intArray();
    expectedIds = root.get(EXPECTED_IDS).intArray();
    eosTokenIds = root.get(EOS_TOKEN_IDS).intArray();
    maxNewTokens = root.get(MAX_NEW_TOKENS).intValue();
    minMatchingPrefix = root.get(TOLERANCE).get(MIN_MATCHING_PREFIX).intValue();
    if (expectedIds.length == 0 || expectedIds.length > maxNewTokens) {
      throw root.get(EXPECTED_IDS).problem("holds " + expectedIds.length + " ids, expected 1 to max_new_tokens ("
          + maxNewTokens + ")");
    }
    if (minMatchingPrefix < 0 || minMatchingPrefix > expectedIds.length) {
      throw root.get(TOLERANCE).get(MIN_MATCHING_PREFIX).problem("is " + minMatchingPrefix + ", outside 0.."
          + expectedIds.length);
    }
  }

  public static SelfCheck parse(Object json) {
    return new SelfCheck(Node.root(FILE, json));
  }

  public static SelfCheck load(File file) {
    return parse(Json.parseFile(file));
  }

  /** The prompt to give the runner; a bundle exported without a tokenizer has none. */
  public String prompt() {
    if (promptText == null) {
      throw new BundleException(FILE + ": prompt_text is null: the bundle was exported without a tokenizer, so the"
          + " app cannot drive it with text; export from a checkpoint directory that has tokenizer.json");
    }
    return promptText;
  }

  /** Total positions the runner may use: the prompt plus every reference token. */
  public int seqLen() {
    return promptIds.length + maxNewTokens;
  }

  /** Every id whose bytes {@link #evaluate} needs. */
  public List<Integer> idsToDecode() {
    List<Integer> ids = new ArrayList<>();
    for (int id : expectedIds) ids.add(id);
    return ids;
  }

  /** Compare the runner's text with the reference; {@code stats} (may be null) adds a prompt-length diagnosis. */
  public Result evaluate(TokenDecoder decoder, String generated, GenerationStats stats) {
    List<byte[]> pieces = decoder.pieces(expectedIds);
    byte[] out = generated.getBytes(StandardCharsets.UTF_8);
    int at = 0;
    int matching = 0;
    while (matching < pieces.size()) {
      byte[] piece = pieces.get(matching);
      if (startsWith(out, at, piece)) {
        at += piece.length;
      } else if (!(isEos(expectedIds[matching]) && at == out.length)) {
        break;
      }
      matching++;
    }
    String expectedText = decoder.decode(expectedIds);
    String detail = null;
    if (stats != null && stats.promptTokens != promptIds.length) {
      detail = "the runner's tokenizer made " + stats.promptTokens + " prompt tokens, the exporter's "
          + promptIds.length + ": the on-device tokenizer differs";
    } else if (matching < expectedIds.length) {
      byte[] all = TokenDecoder.concat(pieces); // `at` bytes of it matched
      detail = "first difference at token " + matching + ": expected "
          + quote(TokenDecoder.utf8(Arrays.copyOfRange(all, at, all.length)))
          + ", got " + quote(TokenDecoder.utf8(Arrays.copyOfRange(out, at, out.length)));
    }
    return new Result(matching >= minMatchingPrefix, matching, minMatchingPrefix, expectedIds.length,
        expectedText, generated, detail);
  }

  private boolean isEos(int id) {
    for (int eos : eosTokenIds) {
      if (eos == id) return true;
    }
    return false;
  }

  private static boolean startsWith(byte[] text, int at, byte[] piece) {
    if (at + piece.length > text.length) return false;
    for (int i = 0; i < piece.length; i++) {
      if (text[at + i] != piece[i]) return false;
    }
    return true;
  }

  private static String quote(String s) {
    String shown = s.length() > 40 ? s.substring(0, 40) + "..." : s;
    return Json.write(shown);
  }

  /** The outcome, ready to show. */
  public static final class Result {
    public final boolean passed;
    public final int matching;
    public final int required;
    public final int expected;
    public final String expectedText;
    public final String generatedText;
    /** Why tokens differ (null when all match). */
    public final String detail;

    Result(boolean passed, int matching, int required, int expected, String expectedText, String generatedText,
        String detail) {
      this.passed = passed;
      this.matching = matching;
      this.required = required;
      this.expected = expected;
      this.expectedText = expectedText;
      this.generatedText = generatedText;
      this.detail = detail;
    }

    /** One line: "Self-check passed: 16 of 16 reference tokens match (16 required)". */
    public String summary() {
      String line = "Self-check " + (passed ? "passed" : "FAILED") + ": " + matching + " of " + expected
          + " reference tokens match (" + required + " required)";
      return detail == null ? line : line + "; " + detail;
    }
  }
}
