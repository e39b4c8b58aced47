using System.Globalization;
using System.Runtime.CompilerServices;

namespace Vfio.Reports;

/// <summary>Text helpers shared by the SVG writers: XML escaping and culture-invariant numbers.</summary>
internal static class SvgText
{
    public static string Escape(string text) =>
        text.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&quot;");

    /// <summary>An interpolated string (or a + of several) formatted with the invariant culture, as SVG numbers must be.</summary>
    public static string Inv(ref InvariantString text) => text.ToStringAndClear();

    /// <summary>Builds an interpolated string with the invariant culture.</summary>
    [InterpolatedStringHandler]
    public ref struct InvariantString(int literalLength, int formattedCount)
    {
        private DefaultInterpolatedStringHandler _inner = new(literalLength, formattedCount, CultureInfo.InvariantCulture);

        public void AppendLiteral(string value) => _inner.AppendLiteral(value);
        public void AppendFormatted<T>(T value) => _inner.AppendFormatted(value);
        public void AppendFormatted<T>(T value, string? format) => _inner.AppendFormatted(value, format);
        public string ToStringAndClear() => _inner.ToStringAndClear();
    }
}
